"""Write a Hugging Face model directory: config.json, model.safetensors, tokenizer.model (SentencePiece).

Directories are written like files (see tinygemma.files): into a temporary directory beside the target, whose
files are renamed into place only once all of them are complete. Files of the same name are replaced (as
Hugging Face's save_pretrained does), other files in the directory stay; a full disk leaves the old ones.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..config import Gemma3Config
from ..errors import TinyGemmaError
from ..files import FileWriteError, describe_os_error


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yields an empty temporary directory beside `path`; when the block ends without error its files are
    renamed into `path` (created if missing), each replacing the file of the same name. On any error the
    temporary directory is removed and `path` is left as it was; OSErrors become a one-line FileWriteError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)           # left by a killed run of the same pid
    try:
        tmp.mkdir(parents=True)
        yield tmp
        for f in tmp.iterdir():                      # the data reaches the disk before the names do
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if not path.exists():
            os.replace(tmp, path)
        else:
            for f in sorted(tmp.iterdir()):
                os.replace(f, path / f.name)
    except OSError as e:
        if isinstance(e, TinyGemmaError):
            raise
        raise FileWriteError(describe_os_error(e, path)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, with its I/O failures (a full disk) raised as OSError."""
    try:
        save_file(dict(tensors), str(path), metadata={"format": "pt"})
    except SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code)) from None


def save_hf_dir(path: str | os.PathLike, config: Gemma3Config, tensors: Mapping[str, torch.Tensor], tokenizer,
                dtype: torch.dtype = torch.float32) -> Path:
    """Write a directory that tinygemma (and Hugging Face transformers) load as Gemma3ForCausalLM.

    An existing directory keeps its other files; the three files are replaced together once all are written."""
    out = Path(path)
    hf = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v.detach().to(dtype).contiguous()
          for k, v in tensors.items()}
    with atomic_dir(out) as tmp:
        save_safetensors(hf, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
        (tmp / "tokenizer.model").write_bytes(sentencepiece_model_bytes(tokenizer))
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
