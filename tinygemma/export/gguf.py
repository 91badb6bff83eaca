"""Write a Gemma 3 model as GGUF (llama.cpp's gemma3 layout), readable by tinygemma and llama.cpp."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, Mapping

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from ..config import SLIDING, Gemma3Config, default_layer_types
from ..files import atomic_path
from ..weights.names import tensor_table

# Types we can quantize to here; K-quants are read but not written (gguf-py has no K-quant quantizer).
WRITABLE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def save_gguf(path: str | os.PathLike, config: Gemma3Config, tensors: Mapping[str, torch.Tensor], tokenizer,
              tensor_type: str = "F32", types: Mapping[str, str] | None = None,
              raw: Mapping[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None,
              name: str = "tinygemma export", extra_metadata: Mapping[str, Any] | None = None) -> None:
    """Write `tensors` (our names, float) as GGUF.

    tensor_type: storage type of the 2-D weights (norms always stay F32, as llama.cpp does);
    types: per-tensor overrides (our name -> type name); raw: already-encoded tensors (our name ->
    (uint8 bytes shaped (rows, row_bytes), type)), written as they are.

    The file is written under a temporary name and renamed over `path` when complete (an existing file is
    replaced; a full disk leaves it as it was and raises a one-line FileWriteError).
    """
    with atomic_path(path) as tmp:
        w = GGUFWriter(os.fspath(tmp), "gemma3")
        try:
            _write(w, config, tensors, tokenizer, tensor_type, dict(types or {}), dict(raw or {}), name,
                   extra_metadata)
            w.close()                   # flushes: a failure here is a failed write too
        except BaseException as e:
            with contextlib.suppress(OSError):
                w.close()
            if isinstance(e, OSError) and e.errno is None:
                # numpy's tofile reports a short write ("N requested and M written") without its cause; one
                # more write to the same file finds it (ENOSPC, EFBIG, ...).
                raise OSError(_write_errno(tmp) or errno.EIO, str(e)) from None
            raise


def _write_errno(path) -> int | None:
    try:
        with open(path, "ab") as f:
            f.write(bytes(1 << 16))
            f.flush()
    except OSError as e:
        return e.errno
    return None


def _write(w: GGUFWriter, config: Gemma3Config, tensors, tokenizer, tensor_type: str, types: dict, raw: dict,
           name: str, extra_metadata) -> None:
    w.add_name(name)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    w.add_float32("gemma3.rope.freq_base_swa", config.rope_local_base_freq)
    w.add_sliding_window(config.sliding_window)
    if config.layer_types != default_layer_types(config.num_hidden_layers):
        w.add_array("gemma3.attention.sliding_window_pattern", [t == SLIDING for t in config.layer_types])
    if config.rope_scaling_factor != 1.0:
        w.add_string("gemma3.rope.scaling.type", "linear")
        w.add_float32("gemma3.rope.scaling.factor", config.rope_scaling_factor)
    if config.query_pre_attn_scalar != config.head_dim:
        w.add_float32("gemma3.attention.query_pre_attn_scalar", config.query_pre_attn_scalar)
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(config, key) is not None:
            w.add_float32(f"gemma3.{key}", getattr(config, key))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokenizer.pieces)
    w.add_token_scores(tokenizer.scores)
    w.add_token_types(tokenizer.token_types)
    w.add_bos_token_id(tokenizer.bos_id)
    w.add_eos_token_id(tokenizer.eos_id)
    if tokenizer.unk_id >= 0:
        w.add_unk_token_id(tokenizer.unk_id)
    if tokenizer.pad_id >= 0:
        w.add_pad_token_id(tokenizer.pad_id)
    w.add_add_bos_token(tokenizer.add_bos)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(tokenizer.add_space_prefix)
    for key, value in (extra_metadata or {}).items():
        _add_value(w, key, value)

    for ours, g_name, is_norm in tensor_table(config.num_hidden_layers, config.tie_word_embeddings):
        if ours in raw:
            data, qtype = raw[ours]
            w.add_tensor(g_name, data, raw_dtype=qtype)
            continue
        arr = tensors[ours].detach().to(torch.float32).numpy()
        if is_norm:
            arr = arr + 1.0      # llama.cpp's convention: norm weights stored as 1 + w
        ttype = "F32" if arr.ndim == 1 else types.get(ours, tensor_type)
        if ttype not in WRITABLE_TYPES:
            raise ValueError(f"cannot write tensor type {ttype} (writable: {', '.join(WRITABLE_TYPES)})")
        qtype = GGMLQuantizationType[ttype]
        if ttype == "F32":
            w.add_tensor(g_name, np.ascontiguousarray(arr))
        elif ttype == "F16":
            w.add_tensor(g_name, arr.astype(np.float16))
        else:
            w.add_tensor(g_name, quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()


def _add_value(w: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if value >= 0 else w.add_int32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        w.add_array(key, list(value))
