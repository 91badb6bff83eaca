"""Load a Hugging Face model directory: config.json, *.safetensors (single or sharded), tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..config import Gemma3Config
from ..errors import WeightsError
from .check import check_tensors, regular_file
from .names import hf_to_ours


MAX_JSON_BYTES = 4 << 20    # config.json and the shard index (real ones: ~2 KiB and ~100 KiB)


def _read_json(file: Path, what: str):
    regular_file(file, what)
    size = file.stat().st_size
    if size > MAX_JSON_BYTES:
        raise WeightsError(f"{file}: {size} bytes; a {what} is far smaller (limit {MAX_JSON_BYTES})")
    try:
        return json.loads(file.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"{file}: not valid JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                           ) from None


def config_from_dir(path: Path) -> Gemma3Config:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise WeightsError(f"{path}: no config.json (expected a Hugging Face model directory)")
    raw = _read_json(cfg_file, "config.json")
    if not isinstance(raw, dict):
        raise WeightsError(f"{cfg_file}: expected a JSON object")
    model_type = raw.get("model_type")
    if model_type not in ("gemma3_text", "gemma3", None):
        raise WeightsError(f"{cfg_file}: unsupported model_type {model_type!r} (expected gemma3_text or gemma3)")
    try:
        return Gemma3Config.from_hf_dict(raw)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{cfg_file}: {e}") from None


def safetensors_files(path: Path) -> list[Path]:
    """The shards: those the index names, or every *.safetensors file. Each must be a regular file inside
    the model folder (no ../, absolute path or link out of it)."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        raw = _read_json(index, "shard index")
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise WeightsError(f"{index}: malformed index (expected a weight_map of tensor name -> file name)")
        files = []
        return [_inside(path, shard, index) for shard in sorted(set(weight_map.values()))]
    files = [_inside(path, f.name, path) for f in sorted(path.glob("*.safetensors"))]
    if not files:
        raise WeightsError(f"{path}: no *.safetensors files")
    return files


def _inside(folder: Path, name: str, source: Path) -> Path:
    """folder / name, if it is a regular file that resolves inside folder; else a one-line WeightsError."""
    if not name or "\0" in name or Path(name).is_absolute():
        raise WeightsError(f"{source}: shard {_short(name)} is not a file name inside the model folder")
    file = folder / name
    try:
        inside = file.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):     # a link loop
        inside = False
    if not inside:
        raise WeightsError(f"{source}: shard {_short(name)} lies outside the model folder {folder}")
    if not file.exists():
        raise WeightsError(f"{source}: shard {_short(name)} is missing")
    return regular_file(file, "safetensors shard")


def _short(text: str) -> str:
    return repr(text) if len(text) <= 200 else repr(text[:197] + "...")


def load_safetensors_dir(path: Path, config: Gemma3Config, read: bool = True
                         ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """float32 tensors under our names, after a strict name and shape check across all shards, and the
    count of tensors per stored dtype. read=False: only the check (no tensors returned).
    """
    handles = {}
    shapes = {}
    original = {}
    stored: dict[str, int] = {}
    for file in safetensors_files(path):
        try:
            f = safe_open(str(file), framework="pt")
            for name in f.keys():
                ours = hf_to_ours(name)
                if ours is None:
                    continue
                if ours in shapes:
                    raise WeightsError(f"{file}: duplicate tensor {name}")
                tslice = f.get_slice(name)
                shapes[ours] = tuple(tslice.get_shape())
                stored[tslice.get_dtype()] = stored.get(tslice.get_dtype(), 0) + 1
                handles[ours] = (f, name)
                original[ours] = name
        except SafetensorError as e:
            raise WeightsError(f"{file}: not a valid safetensors file ({e})") from None
    if config.tie_word_embeddings and "lm_head.weight" in shapes:
        shapes.pop("lm_head.weight")   # some exports write the tied head out; it is the embedding
        handles.pop("lm_head.weight")
    from .check import expected_shapes

    hf_name = {n: "lm_head.weight" if n == "lm_head.weight" else f"model.{n}" for n in expected_shapes(config)}
    check_tensors(shapes, config, path, rename={**hf_name, **original})
    out = {}
    if not read:
        return out, stored
    for ours, (f, name) in handles.items():
        try:
            t = f.get_tensor(name)
        except SafetensorError as e:
            raise WeightsError(f"{path}: cannot read tensor {name} ({e})") from None
        if not t.dtype.is_floating_point:
            raise WeightsError(f"{path}: tensor {name} has non-float dtype {t.dtype}")
        out[ours] = t.to(torch.float32)
    return out, stored
