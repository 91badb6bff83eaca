"""The fast CPU path: int8 layer weights, a Q8_0 (or int8) embedding and output projection, and an on-disk
cache of the converted weights so later loads only map a file.

The converted model is a Gemma3Model whose projections are fused (q/k/v and gate/up each one matrix).
With the native kernels (tinygemma/kernels) they are NativeInt8Linear modules fed by NormQuantize, the
embedding and output projection one Q8Table, and RMSNorm, residual adds and single-query attention run in C.
Without them: Int8Linear modules, an Int8Embedding and an int4 RescoredHead. Everything else (RoPE, the
float32 residual stream) is the exact path's code; norms use FrozenRMSNorm, the same math with the (1 + w)
gain computed once.
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
from .files import atomic_open
from .model import Gemma3Model, empty_model
from .kernels import BLOCK, Q8, DecodeLayer
from .quant import (GROUP_SIZE, FrozenRMSNorm, Int4Linear, Int8Embedding, Int8Linear, NativeInt8Linear,
                    NormQuantize, Q8Table, RescoredHead, TiedHead)

FORMAT_VERSION = 5
# (fused name, source projections): one kernel call instead of several.
FUSED = (("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
         ("self_attn.o_proj", ("self_attn.o_proj",)),
         ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")),
         ("mlp.down_proj", ("mlp.down_proj",)))


def build_fast_model(config: Gemma3Config, tensors: dict[str, torch.Tensor], kernels: Q8 | None = None
                     ) -> Gemma3Model:
    """Convert exact float32 tensors (our names) into the fast model (on the native kernels if given)."""
    return assemble(config, convert(config, tensors, native=kernels is not None), kernels)


def convert(config: Gemma3Config, tensors: dict[str, torch.Tensor], native: bool = False
            ) -> dict[str, torch.Tensor]:
    """The fast model's buffers as a flat dict (what the cache file stores). native: in the layout of the
    native kernels (names ending in .packed_q / .packed_scales) wherever their shapes allow."""
    out: dict[str, torch.Tensor] = {}
    for i in range(config.num_hidden_layers):
        for fused, parts in FUSED:
            w = torch.cat([tensors[f"layers.{i}.{p}.weight"] for p in parts])
            p = f"layers.{i}.{fused}."
            if native and NativeInt8Linear.supports(w.shape[1]):
                out[p + "packed_q"], out[p + "packed_scales"] = NativeInt8Linear.quantize(w)
            else:
                lin = Int8Linear.from_float(w)
                out[p + "q"], out[p + "scales"] = lin.q, lin.scales.to(torch.bfloat16)
    if native and Q8Table.supports(config.hidden_size):
        # One Q8_0 table serves as embedding and output projection (also for an untied lm_head).
        for name in ("embed_tokens", "lm_head"):
            if f"{name}.weight" in tensors:
                out[f"{name}.packed_q"], out[f"{name}.packed_scales"] = Q8Table.quantize(tensors[f"{name}.weight"])
        return _add_norms(out, tensors)
    for name in ("embed_tokens", "lm_head"):
        if f"{name}.weight" in tensors:
            table = Int8Embedding.from_float(tensors[f"{name}.weight"])
            out[f"{name}.q"], out[f"{name}.scales"] = table.q, table.scales
    # The output projection (lm_head if untied, else the embedding): int4 where the kernel allows.
    head = tensors.get("lm_head.weight", tensors["embed_tokens.weight"])
    if Int4Linear.supports(config.hidden_size):
        approx = Int4Linear.from_float(head)
        out["head.packed"], out["head.scales_zeros"] = approx.packed, approx.scales_zeros.to(torch.bfloat16)
    else:
        approx = Int8Linear.from_float(head)
        out["head.q"], out["head.scales"] = approx.q, approx.scales.to(torch.bfloat16)
    return _add_norms(out, tensors)


def _add_norms(out: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for name, t in tensors.items():
        if t.ndim == 1:     # norm gains stay float32
            out[name] = t.float().contiguous()
    return out


# Norms whose output feeds only a (fused) projection: on the native path they hand it quantized values.
NORM_FEEDS = {"input_layernorm": "self_attn.qkv_proj", "pre_feedforward_layernorm": "mlp.gate_up_proj"}


def assemble(config: Gemma3Config, buffers: dict[str, torch.Tensor], kernels: Q8 | None = None) -> Gemma3Model:
    """Build the fast model around converted buffers (no copies: they may be views of a memory map)."""
    if any(name.endswith(".packed_q") for name in buffers) and kernels is None:
        raise ValueError("these converted weights need the native kernels")
    model = empty_model(config)
    for i, layer in enumerate(model.layers):
        for fused, parts in FUSED:
            p = f"layers.{i}.{fused}."
            for part in parts:
                parent, attr = part.split(".")
                setattr(getattr(layer, parent), attr, None)
            parent, attr = fused.split(".")
            out_features = sum(config_rows(config, part) for part in parts)
            lin = (NativeInt8Linear(kernels, buffers[p + "packed_q"], buffers[p + "packed_scales"], out_features)
                   if p + "packed_q" in buffers else Int8Linear(buffers[p + "q"], buffers[p + "scales"]))
            setattr(getattr(layer, parent), attr, lin)
    if "embed_tokens.packed_q" in buffers:
        tables = {name: Q8Table(kernels, buffers[f"{name}.packed_q"], buffers[f"{name}.packed_scales"],
                                config.vocab_size)
                  for name in ("embed_tokens", "lm_head") if f"{name}.packed_q" in buffers}
        model.embed_tokens = tables["embed_tokens"]
        model.lm_head = TiedHead(tables.get("lm_head", tables["embed_tokens"]))
    else:
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
            fed = NORM_FEEDS.get(attr)
            if fed and isinstance(parent.get_submodule(fed), NativeInt8Linear):
                setattr(parent, attr, NormQuantize(kernels, value, config.rms_norm_eps))
            else:
                setattr(parent, attr, FrozenRMSNorm(value, config.rms_norm_eps, kernels))
    if kernels is not None:
        for layer in model.layers:
            layer.self_attn.attend_one = kernels.attend
            layer.self_attn.attend_rows = kernels.attend_rows
            layer.decode = fused_decode(config, layer, kernels)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"fast model: no value for {leftover[0]}")
    return model.eval()


def fused_decode(config: Gemma3Config, block, kernels: Q8):
    """(kernels, DecodeLayer) for a block whose every piece runs on the native kernels, else None
    (TINYGEMMA_FUSED_DECODE=0: never, the module-by-module path, for comparisons)."""
    if os.environ.get("TINYGEMMA_FUSED_DECODE") == "0":
        return None
    attn, mlp = block.self_attn, block.mlp
    native = all(isinstance(m, NativeInt8Linear) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj,
                                                            mlp.down_proj))
    norms = all(isinstance(m, NormQuantize) for m in (block.input_layernorm, block.pre_feedforward_layernorm))
    frozen = all(isinstance(m, FrozenRMSNorm) and m.kernels is not None
                 for m in (attn.q_norm, attn.k_norm, block.post_attention_layernorm, block.post_feedforward_layernorm))
    if not (native and norms and frozen) or attn.softcap is not None or config.head_dim % 2:
        return None
    tensors = [block.input_layernorm.gain, attn.qkv_proj.q, attn.qkv_proj.scales, attn.q_norm.gain, attn.k_norm.gain,
               attn.o_proj.q, attn.o_proj.scales, block.post_attention_layernorm.gain, block.pre_feedforward_layernorm.gain,
               mlp.gate_up_proj.q, mlp.gate_up_proj.scales, mlp.down_proj.q, mlp.down_proj.scales,
               block.post_feedforward_layernorm.gain]
    dims = [config.hidden_size, attn.n_heads, attn.n_kv, attn.head_dim, config.intermediate_size,
            attn.window if attn.sliding else 0]
    return kernels, DecodeLayer(tensors, dims, config.rms_norm_eps, attn.scale)


def config_rows(config: Gemma3Config, part: str) -> int:
    """Output features of one source projection."""
    heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_key_value_heads,
             "self_attn.v_proj": config.num_key_value_heads}
    if part in heads:
        return heads[part] * config.head_dim
    return config.intermediate_size if part in ("mlp.gate_proj", "mlp.up_proj") else config.hidden_size


# ---------------------------------------------------------------------------------------------- cache


def cache_key(source: Path, native: bool, merged: tuple[Path, ...] = ()) -> str:
    """Identifies a weight source (and the files of a LoRA adapter merged into it) by path, size and
    modification time of their files, and the layout."""
    files = (sorted(source.glob("*")) if source.is_dir() else [source]) + list(merged)
    layout = "native" if native else "torch"
    h = hashlib.sha256(f"v{FORMAT_VERSION} g{GROUP_SIZE} {layout} b{BLOCK} {torch.__version__}".encode())
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.resolve()} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


_DTYPES = {torch.uint8: "U8", torch.int8: "I8", torch.int32: "I32", torch.float32: "F32",
           torch.bfloat16: "BF16"}
_FROM = {v: k for k, v in _DTYPES.items()}


ALIGN = 64     # tensor data offsets in the cache file: kernels load 64-byte rows, some need alignment


def save_buffers(path: Path, buffers: dict[str, torch.Tensor]) -> None:
    """Write buffers as a safetensors-style file (8-byte header length, JSON header, data) whose tensors all
    start at multiples of ALIGN bytes, so memory-mapped views are aligned. Atomic: a reader never sees
    half a file."""
    header, offset = {}, 0
    for name, t in buffers.items():
        offset += -offset % ALIGN
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-(8 + len(blob)) % ALIGN)
    with atomic_open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, t in buffers.items():
            f.seek(8 + len(blob) + header[name]["data_offsets"][0])
            if t.numel():
                f.write(memoryview(t.contiguous().view(torch.uint8).numpy()))
        f.truncate(8 + len(blob) + offset)


def map_buffers(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a save_buffers file as views of a private memory map: no copy, pages load on first use."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(size - 8, 1 << 26):
            raise ValueError(f"{path}: bad header length {n}")
        header = json.loads(f.read(n))
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    base = 8 + n
    out = {}
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if not 0 <= start <= end <= size - base or (base + start) % ALIGN:
                raise ValueError(f"{path}: tensor {name} lies outside the file or is not aligned")
            dtype = _FROM[info["dtype"]]
            count = (end - start) // torch.empty((), dtype=dtype).element_size()
            t = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start) if count else \
                torch.empty(0, dtype=dtype)
            out[name] = t.reshape(info["shape"])
    except (TypeError, KeyError, AttributeError) as e:   # a damaged header: the caller rebuilds the cache
        raise ValueError(f"{path}: malformed header ({type(e).__name__})") from None
    return out
