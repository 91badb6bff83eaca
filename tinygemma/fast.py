"""The fast CPU path: int8 layer weights, an int4 output projection rescored exactly for its top candidates,
an int8 embedding, and an on-disk cache of the converted weights so later loads only map a file.

The converted model is a Gemma3Model whose projections are fused Int8Linear modules (q/k/v and gate/up
each one matrix), whose embedding is an Int8Embedding and whose output projection is a RescoredHead.
Everything else (RoPE, attention, the float32 residual stream) is the exact path's code; norms use
FrozenRMSNorm, the same math with the (1 + w) gain computed once.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path

import torch
from torch import nn

from .config import Gemma3Config
from .model import Gemma3Model
from .quant import GROUP_SIZE, FrozenRMSNorm, Int4Linear, Int8Embedding, Int8Linear, RescoredHead

FORMAT_VERSION = 3
# (fused name, source projections): one kernel call instead of several.
FUSED = (("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
         ("self_attn.o_proj", ("self_attn.o_proj",)),
         ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")),
         ("mlp.down_proj", ("mlp.down_proj",)))


def build_fast_model(config: Gemma3Config, tensors: dict[str, torch.Tensor]) -> Gemma3Model:
    """Convert exact float32 tensors (our names) into the fast model."""
    return assemble(config, convert(config, tensors))


def convert(config: Gemma3Config, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fast model's buffers as a flat dict (what the cache file stores)."""
    out: dict[str, torch.Tensor] = {}
    for i in range(config.num_hidden_layers):
        for fused, parts in FUSED:
            w = torch.cat([tensors[f"layers.{i}.{p}.weight"] for p in parts])
            lin = Int8Linear.from_float(w)
            out[f"layers.{i}.{fused}.q"], out[f"layers.{i}.{fused}.scales"] = lin.q, lin.scales
    for name in ("embed_tokens", "lm_head"):
        if f"{name}.weight" in tensors:
            table = Int8Embedding.from_float(tensors[f"{name}.weight"])
            out[f"{name}.q"], out[f"{name}.scales"] = table.q, table.scales
    # The output projection (lm_head if untied, else the embedding): int4 where the kernel allows.
    head = tensors.get("lm_head.weight", tensors["embed_tokens.weight"])
    if Int4Linear.supports(config.hidden_size):
        approx = Int4Linear.from_float(head)
        out["head.packed"], out["head.scales_zeros"] = approx.packed, approx.scales_zeros
    else:
        approx = Int8Linear.from_float(head)
        out["head.q"], out["head.scales"] = approx.q, approx.scales
    for name, t in tensors.items():
        if t.ndim == 1:     # norm gains stay float32
            out[name] = t.float().contiguous()
    return out


def assemble(config: Gemma3Config, buffers: dict[str, torch.Tensor]) -> Gemma3Model:
    """Build the fast model around converted buffers (no copies: they may be views of a memory map)."""
    with torch.device("meta"):
        model = Gemma3Model(config)
    for i, layer in enumerate(model.layers):
        for fused, parts in FUSED:
            p = f"layers.{i}.{fused}."
            for part in parts:
                parent, attr = part.split(".")
                setattr(getattr(layer, parent), attr, None)
            parent, attr = fused.split(".")
            setattr(getattr(layer, parent), attr, Int8Linear(buffers[p + "q"], buffers[p + "scales"]))
    model.embed_tokens = Int8Embedding(buffers["embed_tokens.q"], buffers["embed_tokens.scales"])
    table = (Int8Embedding(buffers["lm_head.q"], buffers["lm_head.scales"]) if "lm_head.q" in buffers
             else model.embed_tokens)
    approx = (Int4Linear(buffers["head.packed"], buffers["head.scales_zeros"], config.vocab_size,
                         config.hidden_size) if "head.packed" in buffers
              else Int8Linear(buffers["head.q"], buffers["head.scales"]))
    model.lm_head = RescoredHead(approx, table)
    for name, value in buffers.items():
        if value.ndim == 1 and name.endswith(".weight"):
            module_name = name.removesuffix(".weight")
            parent_name, _, attr = module_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, FrozenRMSNorm(value, config.rms_norm_eps))
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"fast model: no value for {leftover[0]}")
    return model.eval()


# ---------------------------------------------------------------------------------------------- cache


def cache_key(source: Path) -> str:
    """Identifies a weight source by path, size and modification time of its files."""
    files = sorted(source.glob("*")) if source.is_dir() else [source]
    h = hashlib.sha256(f"v{FORMAT_VERSION} g{GROUP_SIZE} {torch.__version__}".encode())
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.resolve()} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


_DTYPES = {torch.uint8: "U8", torch.int8: "I8", torch.int32: "I32", torch.float32: "F32",
           torch.bfloat16: "BF16"}
_FROM = {v: k for k, v in _DTYPES.items()}


def save_buffers(path: Path, buffers: dict[str, torch.Tensor]) -> None:
    """Write buffers in the safetensors layout (atomically: a reader never sees half a file)."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in buffers.items()}, str(tmp), metadata={"format": "tinygemma-fast"})
    os.replace(tmp, path)


def map_buffers(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file as views of a private memory map: no copy, pages load on first use."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(size - 8, 1 << 26):
            raise ValueError(f"{path}: bad header length {n}")
        header = json.loads(f.read(n))
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= size - base:
            raise ValueError(f"{path}: tensor {name} lies outside the file")
        dtype = _FROM[info["dtype"]]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        t = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start) if count else \
            torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"])
    return out
