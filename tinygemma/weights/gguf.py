"""A strict GGUF reader: header and metadata parsed with bounds checks, tensors read lazily from a memory map.

Every problem is reported as a `WeightsError` whose one-line message names the file and the field,
before any tensor data is touched, so a damaged or hostile file never causes a large allocation.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

import torch

from ..config import FULL, SLIDING, Gemma3Config, default_layer_types
from ..errors import WeightsError
from .check import check_tensors
from .names import tensor_table

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_STRING_BYTES = 1 << 20       # no key, name or vocabulary piece is anywhere near 1 MiB
MAX_ARRAY_ITEMS = 1 << 24        # 16 M entries: far above any vocabulary

# Tensor types we load: the ones common Gemma 3 GGUFs use.
SUPPORTED_TYPES = {
    GGMLQuantizationType[name] for name in
    ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
}

# GGUF value types: id -> (struct format, byte size) for scalars; 8 is string, 9 is array.
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
            6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file. `shape` is in PyTorch order (GGUF's ne reversed)."""

    name: str
    shape: tuple[int, ...]
    type: GGMLQuantizationType
    offset: int          # absolute byte offset in the file
    nbytes: int


class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path, self.end = buf, 0, path, len(buf)

    def fail(self, what: str):
        raise WeightsError(f"{self.path}: {what}")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            self.fail(f"truncated file: {what} needs {n} bytes at offset {self.pos}, "
                      f"file has {self.end}")
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def scalar(self, vtype: int, what: str):
        fmt, size = _SCALARS[vtype]
        return struct.unpack(fmt, self.take(size, what))[0]

    def u32(self, what: str) -> int:
        return self.scalar(4, what)

    def u64(self, what: str) -> int:
        return self.scalar(10, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > MAX_STRING_BYTES:
            self.fail(f"{what} claims {n} bytes (limit {MAX_STRING_BYTES})")
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")

    def strings(self, count: int, what: str) -> list[str]:
        """`count` length-prefixed strings: the vocabulary's 262,144 pieces, so a tight loop."""
        buf, pos, end = self.buf, self.pos, self.end
        unpack = struct.Struct("<Q").unpack_from
        out = []
        append = out.append
        try:
            for i in range(count):
                (n,) = unpack(buf, pos)
                pos += 8
                if n > MAX_STRING_BYTES or pos + n > end:
                    self.pos = pos
                    self.fail(f"truncated file: {what}[{i}] claims {n} bytes at offset {pos}")
                append(str(buf[pos:pos + n], "utf-8"))
                pos += n
        except struct.error:
            self.fail(f"truncated file: {what} ends inside a string length")
        except UnicodeDecodeError:
            self.fail(f"{what}[{len(out)}] is not valid UTF-8")
        self.pos = pos
        return out

    def value(self, vtype: int, what: str) -> Any:
        if vtype == 6:
            # float32 -> the shortest decimal that round-trips (1e-06, not 9.99999997e-07), as configs write it.
            return float(str(np.float32(self.scalar(vtype, what))))
        if vtype in _SCALARS:
            return self.scalar(vtype, what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            itype = self.u32(f"item type of {what}")
            count = self.u64(f"length of {what}")
            if count > MAX_ARRAY_ITEMS:
                self.fail(f"{what} claims {count} items (limit {MAX_ARRAY_ITEMS})")
            if itype in _NUMPY:
                size = _SCALARS[itype][1]
                arr = np.frombuffer(self.take(count * size, what), dtype=_NUMPY[itype])
                return [bool(x) for x in arr] if itype == 7 else arr.tolist()
            if itype == _STRING:
                # Cheapest possible minimum: each string needs at least its 8-byte length.
                if count * 8 > self.end - self.pos:
                    self.fail(f"truncated file: {what} claims {count} strings")
                return self.strings(count, what)
            self.fail(f"{what} has unsupported array item type {itype}")
        self.fail(f"{what} has unknown value type {vtype}")


class GGUFFile:
    """A parsed GGUF file: `metadata` (key -> Python value) and `tensors` (name -> TensorInfo).

    Tensor data is read lazily through a read-only memory map (`raw`, `load`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            fh = open(self.path, "rb")
        except OSError as e:
            raise WeightsError(f"{self.path}: cannot open ({e.strerror or e})") from None
        with fh:
            if size < 24:
                raise WeightsError(f"{self.path}: not a GGUF file (only {size} bytes)")
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.file_size = size
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    def _parse(self):
        cur = _Cursor(self._mm, self.path)
        if bytes(cur.take(4, "magic")) != GGUF_MAGIC:
            cur.fail("not a GGUF file (bad magic)")
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            cur.fail(f"unsupported GGUF version {self.version}")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # Each metadata entry needs >= 13 bytes (key length, type, 1-byte value); each tensor info >= 28.
        if n_kv * 13 > self.file_size or n_tensors * 28 > self.file_size:
            cur.fail(f"absurd header counts ({n_tensors} tensors, {n_kv} metadata entries) "
                     f"for a {self.file_size}-byte file")
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            vtype = cur.u32(f"type of {key}")
            if key in self.metadata:
                cur.fail(f"duplicate metadata key {key}")
            self.metadata[key] = cur.value(vtype, key)
        infos = []
        for i in range(n_tensors):
            name = cur.string(f"tensor name #{i}")
            n_dims = cur.u32(f"dimension count of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                cur.fail(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            ne = [cur.u64(f"shape of {name}") for _ in range(n_dims)]
            tcode = cur.u32(f"type of {name}")
            offset = cur.u64(f"offset of {name}")
            infos.append((name, ne, tcode, offset))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            cur.fail(f"general.alignment must be a power of two, got {alignment!r}")
        data_start = -(-cur.pos // alignment) * alignment
        for name, ne, tcode, offset in infos:
            try:
                ttype = GGMLQuantizationType(tcode)
            except ValueError:
                cur.fail(f"tensor {name} has unknown tensor type {tcode}")
            if ttype not in SUPPORTED_TYPES:
                cur.fail(f"tensor {name} has unsupported tensor type {ttype.name} "
                         f"(supported: {', '.join(sorted(t.name for t in SUPPORTED_TYPES))})")
            block, block_bytes = GGML_QUANT_SIZES[ttype]
            if any(d <= 0 or d > 1 << 40 for d in ne):
                cur.fail(f"tensor {name} has invalid shape {ne}")
            if ne[0] % block:
                cur.fail(f"tensor {name}: row length {ne[0]} is not a multiple of the "
                         f"{ttype.name} block size {block}")
            n_rows = int(np.prod(ne[1:], dtype=np.float64)) if len(ne) > 1 else 1
            nbytes = n_rows * (ne[0] // block) * block_bytes
            start = data_start + offset
            if offset % alignment:
                cur.fail(f"tensor {name}: offset {offset} is not aligned to {alignment}")
            if start + nbytes > self.file_size:
                cur.fail(f"truncated file: tensor {name} needs bytes up to {start + nbytes}, "
                         f"file has {self.file_size}")
            if name in self.tensors:
                cur.fail(f"duplicate tensor {name}")
            self.tensors[name] = TensorInfo(name, tuple(reversed(ne)), ttype, start, nbytes)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 array (a view of the memory map, no copy)."""
        info = self.tensors[name]
        return np.frombuffer(self._mm, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def load(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, in PyTorch shape order."""
        info = self.tensors[name]
        raw = self.raw(name)
        if info.type == GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(info.shape).copy()
        if info.type == GGMLQuantizationType.F16:
            return raw.view(np.float16).astype(np.float32).reshape(info.shape)
        rows = raw.reshape(-1, info.nbytes // max(1, int(np.prod(info.shape[:-1]))))
        return dequantize(rows, info.type).reshape(info.shape)

    def close(self):
        self._mm.close()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Just the metadata of a GGUF file (plain Python values)."""
    gf = GGUFFile(path)
    gf.close()
    return gf.metadata


def config_from_gguf(gf: GGUFFile) -> Gemma3Config:
    """Architecture from GGUF metadata (llama.cpp's gemma3 keys); nothing assumed about model size."""
    meta = gf.metadata
    arch = meta.get("general.architecture")
    if arch != "gemma3":
        raise WeightsError(f"{gf.path}: unsupported architecture {arch!r} (general.architecture must be 'gemma3')")

    def get(key, kind, default=None):
        full = f"gemma3.{key}"
        value = meta.get(full, default)
        if value is None:
            raise WeightsError(f"{gf.path}: missing metadata key {full}")
        if isinstance(value, list):
            if not value or any(v != value[0] for v in value):
                raise WeightsError(f"{gf.path}: per-layer values of {full} are not supported")
            value = value[0]
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise WeightsError(f"{gf.path}: metadata key {full} must be an integer, got {value!r}")
        if kind is float and not isinstance(value, (int, float)):
            raise WeightsError(f"{gf.path}: metadata key {full} must be a number, got {value!r}")
        return kind(value)

    n_layers = get("block_count", int)
    hidden = get("embedding_length", int)
    heads = get("attention.head_count", int)
    head_dim = get("attention.key_length", int, hidden // max(heads, 1))
    if get("attention.value_length", int, head_dim) != head_dim:
        raise WeightsError(f"{gf.path}: attention.value_length differs from attention.key_length")
    embd = gf.tensors.get("token_embd.weight")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if isinstance(tokens, list) else (embd.shape[0] if embd else 0)
    pattern = meta.get("gemma3.attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):
        # llama.cpp's per-layer form: true = sliding-window layer.
        if len(pattern) != n_layers:
            raise WeightsError(f"{gf.path}: gemma3.attention.sliding_window_pattern has {len(pattern)} "
                               f"entries for {n_layers} layers")
        layer_types = tuple(SLIDING if s else FULL for s in pattern)
    elif isinstance(pattern, int) and pattern > 0:
        layer_types = default_layer_types(n_layers, pattern)
    else:
        raise WeightsError(f"{gf.path}: invalid gemma3.attention.sliding_window_pattern {pattern!r}")
    scaling = meta.get("gemma3.rope.scaling.type", "none")
    factor = get("rope.scaling.factor", float, 1.0) if scaling == "linear" else 1.0
    if scaling not in ("none", "linear"):
        raise WeightsError(f"{gf.path}: unsupported gemma3.rope.scaling.type {scaling!r}")
    # llama.cpp: attention scale is head_dim ** -0.5, except Gemma 3 27B (62 layers): hidden / heads.
    scalar = get("attention.query_pre_attn_scalar", float,
                 hidden / heads if n_layers == 62 and heads else head_dim)
    softcap = meta.get("gemma3.final_logit_softcapping")
    attn_softcap = meta.get("gemma3.attn_logit_softcapping")
    try:
        return Gemma3Config(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=get("feed_forward_length", int),
            num_hidden_layers=n_layers, num_attention_heads=heads,
            num_key_value_heads=get("attention.head_count_kv", int, heads), head_dim=head_dim,
            rms_norm_eps=get("attention.layer_norm_rms_epsilon", float, 1e-6),
            rope_theta=get("rope.freq_base", float, 1_000_000.0),
            rope_local_base_freq=get("rope.freq_base_swa", float, 10_000.0),
            rope_scaling_factor=factor, sliding_window=get("attention.sliding_window", int),
            layer_types=layer_types, query_pre_attn_scalar=scalar,
            max_position_embeddings=get("context_length", int),
            final_logit_softcapping=float(softcap) if softcap else None,
            attn_logit_softcapping=float(attn_softcap) if attn_softcap else None,
            tie_word_embeddings="output.weight" not in gf.tensors,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id", 2),
            eos_token_id=meta.get("tokenizer.ggml.eos_token_id", 1),
            pad_token_id=meta.get("tokenizer.ggml.padding_token_id", 0),
        )
    except ValueError as e:
        raise WeightsError(f"{gf.path}: {e}") from None


def load_gguf_tensors(gf: GGUFFile, config: Gemma3Config, read: bool = True) -> dict[str, torch.Tensor]:
    """Dequantized float32 tensors under our names, after a strict name and shape check of the whole file.

    read=False: only the check.
    """
    table = tensor_table(config.num_hidden_layers, config.tie_word_embeddings)
    to_ours = {g: (ours, norm) for ours, g, norm in table}
    check_tensors({to_ours[n][0] if n in to_ours else n: info.shape for n, info in gf.tensors.items()},
                  config, gf.path, rename={ours: g for ours, g, _ in table})
    out = {}
    if not read:
        return out
    for g_name, (ours, is_norm) in to_ours.items():
        arr = torch.from_numpy(np.ascontiguousarray(gf.load(g_name)))
        # llama.cpp's converter stores RMSNorm weights as 1 + w; the model applies (1 + w) itself.
        out[ours] = arr - 1.0 if is_norm else arr
    return out
