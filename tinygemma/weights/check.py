"""Strict checks of what a weight source holds: every expected tensor present with the right shape, nothing
extra; only regular files opened."""

from __future__ import annotations

from pathlib import Path

from ..config import Gemma3Config
from ..errors import TinyGemmaError, WeightsError
from ..files import check_regular_file


def regular_file(path, what: str) -> Path:
    """`path` as a Path if it is a regular file (or a link to one); else a one-line WeightsError. A FIFO would
    block open() forever, a device would be read without end."""
    try:
        return check_regular_file(path, what)
    except WeightsError:
        raise
    except TinyGemmaError as e:
        raise WeightsError(str(e)) from None


def expected_shapes(config: Gemma3Config) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the model for `config`, computed without allocating (meta device)."""
    from ..model import empty_model

    model = empty_model(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def check_tensors(found: dict[str, tuple[int, ...]], config: Gemma3Config, source, rename=None) -> None:
    """Raise WeightsError naming the first missing, unexpected or mis-shaped tensor.

    found: our tensor name -> shape; rename: our name -> the name in the file, for messages.
    """
    rename = rename or {}
    expected = expected_shapes(config)
    for name, shape in expected.items():
        if name not in found:
            raise WeightsError(f"{source}: missing tensor {rename.get(name, name)}")
        if tuple(found[name]) != shape:
            raise WeightsError(f"{source}: tensor {rename.get(name, name)} has shape {list(found[name])}, "
                               f"expected {list(shape)}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise WeightsError(f"{source}: unexpected tensor {rename.get(extra[0], extra[0])}"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
