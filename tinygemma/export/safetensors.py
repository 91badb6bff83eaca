"""Write a Hugging Face model directory: config.json, model.safetensors, tokenizer.model (SentencePiece)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from ..config import Gemma3Config


def save_hf_dir(path: str | os.PathLike, config: Gemma3Config, tensors: Mapping[str, torch.Tensor], tokenizer,
                dtype: torch.dtype = torch.float32) -> Path:
    """Write a directory that tinygemma (and Hugging Face transformers) load as Gemma3ForCausalLM."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    hf = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v.detach().to(dtype).contiguous()
          for k, v in tensors.items()}
    save_file(hf, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    (out / "tokenizer.model").write_bytes(sentencepiece_model_bytes(tokenizer))
    return out


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1       # negative int32 values are written as 10-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint(num << 3 | wire) + payload


def _bytes_field(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


def sentencepiece_model_bytes(tokenizer) -> bytes:
    """Serialize the vocabulary as a SentencePiece ModelProto (BPE, no dummy prefix, byte fallback)."""
    parts = []
    for piece, score, ttype in zip(tokenizer.pieces, tokenizer.scores, tokenizer.token_types):
        msg = (_bytes_field(1, piece.encode("utf-8")) + _field(2, 5, struct.pack("<f", score))
               + _field(3, 0, _varint(ttype)))
        parts.append(_bytes_field(1, msg))
    trainer = (_field(3, 0, _varint(2))                      # model_type = BPE
               + _field(35, 0, _varint(1))                   # byte_fallback = true
               + _field(40, 0, _varint(tokenizer.unk_id)) + _field(41, 0, _varint(tokenizer.bos_id))
               + _field(42, 0, _varint(tokenizer.eos_id)) + _field(43, 0, _varint(tokenizer.pad_id)))
    normalizer = (_bytes_field(1, b"identity") + _field(3, 0, _varint(int(tokenizer.add_space_prefix)))
                  + _field(4, 0, _varint(0)) + _field(5, 0, _varint(1)))
    parts.append(_bytes_field(2, trainer))
    parts.append(_bytes_field(3, normalizer))
    return b"".join(parts)
