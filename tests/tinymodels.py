"""Tiny random Gemma 3 models for fast tests: a small SPM vocabulary, random weights, file writers."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from tinygemma.config import FULL, SLIDING, Gemma3Config
from tinygemma.tokenizer import Tokenizer
from tinygemma.weights.check import expected_shapes

CONTROL, USER_DEFINED, BYTE, NORMAL = 3, 4, 6, 1


def tiny_tokenizer(min_size: int = 0) -> Tokenizer:
    """A Gemma-like vocabulary: control tokens, byte fallback, a few merges; padded to `min_size`."""
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "\n", "\n\n"]
    types = [CONTROL] * 7 + [USER_DEFINED] * 2
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    normal = ["▁", *"abcdefghijklmnopqrstuvwxyz", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *".,!?'",
              "th", "he", "▁t", "▁th", "▁the", "in", "an", "er", "on", "▁a", "re", "nd", "▁o", "▁on",
              "ce", "▁once", "up", "▁up", "▁upon", "ti", "me", "▁time", "▁w", "or", "ld", "▁world",
              "He", "ll", "llo", "Hello", "▁c", "at", "▁cat", "▁s", "at", "▁sat"]
    scores = [0.0] * len(pieces)
    seen = set(pieces)
    for rank, p in enumerate(normal):
        if p in seen:
            continue
        seen.add(p)
        pieces.append(p)
        types.append(NORMAL)
        # Single characters score lowest; longer merges rank by their place in the list.
        scores.append(-1000.0 - rank if len(p) == 1 else -float(rank))
    while len(pieces) < min_size:
        pieces.append(f"<unused{len(pieces)}>")
        types.append(CONTROL)
        scores.append(0.0)
    return Tokenizer(pieces, scores, types, bos_id=2, eos_id=1, unk_id=3, pad_id=0)


def tiny_config(**overrides) -> Gemma3Config:
    base = dict(vocab_size=tiny_tokenizer().vocab_size, hidden_size=64, intermediate_size=96,
                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                query_pre_attn_scalar=24.0, sliding_window=8, max_position_embeddings=256,
                layer_types=(SLIDING, SLIDING, FULL, SLIDING), rope_theta=10_000.0, rope_local_base_freq=100.0)
    base.update(overrides)
    return Gemma3Config(**base)


def random_tensors(config: Gemma3Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights with non-zero norm gains, sized so activations stay well scaled."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            t = torch.randn(shape, generator=g) * 0.3
        elif name == "embed_tokens.weight":
            t = torch.randn(shape, generator=g) * 0.1
        else:
            t = torch.randn(shape, generator=g) * (shape[1] ** -0.5)
        out[name] = t
    return out


def random_kquant(shape: tuple[int, int], ttype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random but well-formed K-quant bytes for a (rows, cols) weight, and their float32 dequantization.

    gguf-py cannot quantize to K-quants, so blocks are random with sane float16 scales.
    """
    qtype = GGMLQuantizationType[ttype]
    block, nbytes = GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    scale = np.float16(0.002).tobytes()
    if ttype in ("Q4_K", "Q5_K"):        # d, dmin at the block start
        data[..., 0:2] = np.frombuffer(scale, np.uint8)
        data[..., 2:4] = np.frombuffer(np.float16(0.001).tobytes(), np.uint8)
    elif ttype == "Q6_K":                # d at the block end
        data[..., -2:] = np.frombuffer(scale, np.uint8)
    data = data.reshape(rows, -1)
    return data, dequantize(data, qtype).reshape(rows, cols)


def with_config(config: Gemma3Config, **changes) -> Gemma3Config:
    return dataclasses.replace(config, **changes)
