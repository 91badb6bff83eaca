"""The training checkpoint file: the weights being trained, optimizer state, RNG state and the run's history.

Only tensors and plain containers (dict, list, tuple, str, numbers, None) go in, so it is read back with
torch.load(weights_only=True): a checkpoint someone else put in --out cannot run code when a run resumes.
Written under a temporary name and renamed, so a full disk leaves the previous checkpoint.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

from ..errors import TinyGemmaError
from ..files import atomic_path, check_regular_file

KEYS = ("trainable", "optimizer", "rng", "state", "config")


class CheckpointError(TinyGemmaError, ValueError):
    """A checkpoint file is unreadable, not one of ours, or holds objects that are refused."""


class _Recorder:
    """A file wrapper that keeps the OSError of a failed write: torch.save reports it as a bare RuntimeError."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """torch.save through a temporary file renamed over `path`; a full disk raises a one-line FileWriteError."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            out = _Recorder(f)
            try:
                torch.save(payload, out)
            except RuntimeError:
                if out.error is not None:
                    raise out.error from None
                raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The payload of a checkpoint written by save_checkpoint; CheckpointError (one line) for anything else."""
    path = Path(path)
    check_regular_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():      # a foreign file draws torch's pickle-protocol warning; the error says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            # torch's message is a paragraph; the line that says what was refused is enough.
            detail = next((line.strip() for line in str(e).splitlines() if "nsupported" in line), "")
            raise CheckpointError(f"{path}: refused: not only tensors and plain values "
                                  f"({detail or 'weights_only load failed'}); nothing in it was run") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    except Exception as e:     # torch.load raises RuntimeError, EOFError, ... on a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in KEYS):
        raise CheckpointError(f"{path}: not a tinygemma checkpoint (needs {', '.join(KEYS)})")
    trainable, rng = payload["trainable"], payload["rng"]
    if not isinstance(trainable, dict) or not all(isinstance(v, torch.Tensor) for v in trainable.values()):
        raise CheckpointError(f"{path}: 'trainable' must map names to tensors")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        raise CheckpointError(f"{path}: 'rng' must be a uint8 tensor (torch.get_rng_state())")
    for key in ("optimizer", "state", "config"):
        if not isinstance(payload[key], dict):
            raise CheckpointError(f"{path}: {key!r} must be a mapping")
    return payload


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
