"""Load a Hugging Face model directory: config.json, *.safetensors (single or sharded), tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..config import Gemma3Config
from ..errors import WeightsError
from .check import check_tensors
from .names import hf_to_ours


def config_from_dir(path: Path) -> Gemma3Config:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise WeightsError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{cfg_file}: not valid JSON ({e})") from None
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
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise WeightsError(f"{index}: malformed index ({e})") from None
        files = [path / s for s in shards]
        for f in files:
            if not f.is_file():
                raise WeightsError(f"{index}: shard {f.name} is missing")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{path}: no *.safetensors files")
    return files


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
