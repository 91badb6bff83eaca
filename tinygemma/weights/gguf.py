"""A strict GGUF reader: header and metadata walked with bounds checks, values decoded only when read, tensors
read lazily from a memory map.

Every problem is reported as a `WeightsError` whose one-line message names the file and the field. The
architecture is checked as soon as its key is met; every count is bounded by what the rest of the file can hold
and by what a Gemma 3 file plausibly has; arrays stay in the file until something reads them. So a damaged or
hostile file is refused in well under a second, and costs at most about its own size in memory.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

import torch

from ..config import FULL, SIZE_LIMITS, SLIDING, Gemma3Config, default_layer_types, size_problem
from ..errors import WeightsError
from .check import check_tensors, regular_file
from .names import tensor_table

GGUF_MAGIC = b"GGUF"
ARCHITECTURE = "gemma3"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NAME_BYTES = 256             # keys and tensor names (ggml's own limit on tensor names is 64 bytes)
MAX_STRING_BYTES = 1 << 20       # no value or vocabulary piece is anywhere near 1 MiB (chat templates: ~10 KiB)
MAX_ARRAY_ITEMS = SIZE_LIMITS["vocab_size"]   # no Gemma 3 metadata array is longer than the vocabulary
MAX_STRING_ITEMS = 1 << 22       # strings in all arrays together (Gemma 3: 262,144); each costs ~0.1 us to walk
MAX_KV = 1 << 16                 # metadata entries (real files: ~40)
MAX_TENSORS = 1 << 16            # tensor infos (Gemma 3 27B: 808)
MAX_FACTS, MAX_FACT_BYTES = 256, 4096   # what facts() keeps for `info`

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
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file. `shape` is in PyTorch order (GGUF's ne reversed)."""

    name: str
    shape: tuple[int, ...]
    type: GGMLQuantizationType
    offset: int          # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class Field:
    """Where one metadata value lies in the file; it is decoded only when read."""

    type: int            # GGUF value type (9: array of `item_type`)
    offset: int          # of the value; for strings and arrays, of the first byte or item after the length
    count: int           # strings: bytes; arrays: items; scalars: 1
    item_type: int = -1

    @property
    def is_array(self) -> bool:
        return self.type == _ARRAY


class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path, self.end = buf, 0, path, len(buf)
        self.strings_left = MAX_STRING_ITEMS

    def fail(self, what: str):
        raise WeightsError(f"{self.path}: {what}")

    def skip(self, n: int, what: str) -> int:
        """Moves past n bytes; returns where they start."""
        if n < 0 or self.pos + n > self.end:
            self.fail(f"truncated file: {what} needs {n} bytes at offset {self.pos}, file has {self.end}")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, vtype: int, what: str):
        fmt, size = _SCALARS[vtype]
        return struct.unpack_from(fmt, self.buf, self.skip(size, what))[0]

    def u32(self, what: str) -> int:
        return self.scalar(4, what)

    def u64(self, what: str) -> int:
        return self.scalar(10, what)

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        n = self.u64(f"length of {what}")
        if n > limit:
            self.fail(f"{what} claims {n} bytes (limit {limit})")
        start = self.skip(n, what)
        return _utf8(self.buf[start:start + n], what, self.path)

    def field(self, vtype: int, what: str) -> Field:
        """Moves past one value, checking its lengths, without decoding it."""
        if vtype in _SCALARS:
            return Field(vtype, self.skip(_SCALARS[vtype][1], what), 1)
        if vtype == _STRING:
            n = self.u64(f"length of {what}")
            if n > MAX_STRING_BYTES:
                self.fail(f"{what} claims {n} bytes (limit {MAX_STRING_BYTES})")
            return Field(vtype, self.skip(n, what), n)
        if vtype != _ARRAY:
            self.fail(f"{what} has unknown value type {vtype}")
        itype = self.u32(f"item type of {what}")
        count = self.u64(f"length of {what}")
        if count > MAX_ARRAY_ITEMS:
            self.fail(f"{what} claims {count} items (limit {MAX_ARRAY_ITEMS})")
        if itype in _NUMPY:
            return Field(vtype, self.skip(count * _SCALARS[itype][1], what), count, itype)
        if itype != _STRING:
            self.fail(f"{what} has unsupported array item type {itype}")
        # Each string needs at least its 8-byte length; all arrays together hold at most MAX_STRING_ITEMS.
        if count * 8 > self.end - self.pos:
            self.fail(f"truncated file: {what} claims {count} strings")
        if count > self.strings_left:
            self.fail(f"{what} claims {count} strings: more than {MAX_STRING_ITEMS} in all arrays together")
        self.strings_left -= count
        start = self.pos
        self.pos = self._walk_strings(count, what)
        return Field(vtype, start, count, itype)

    def _walk_strings(self, count: int, what: str) -> int:
        """Where `count` length-prefixed strings from here end (checking each length): a tight loop."""
        buf, pos, end = self.buf, self.pos, self.end
        unpack = _LENGTH.unpack_from
        for i in range(count):
            if pos + 8 > end:
                self.fail(f"truncated file: {what} ends inside the length of item {i}")
            (n,) = unpack(buf, pos)
            pos += 8 + n
            if n > MAX_STRING_BYTES or pos > end:
                self.fail(f"truncated file: {what}[{i}] claims {n} bytes at offset {pos - n}")
        return pos


def _utf8(raw: bytes, what: str, path: Path) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError:
        raise WeightsError(f"{path}: {what} is not valid UTF-8") from None


class Metadata(Mapping):
    """GGUF metadata, key -> plain Python value (arrays as lists), each value decoded from the file the first
    time it is read: arrays nothing reads cost nothing, whatever their size."""

    def __init__(self, gf: "GGUFFile"):
        self._gf, self._values = gf, {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            self._values[key] = self._gf._decode(key, self._gf.fields[key])
        return self._values[key]

    def __contains__(self, key) -> bool:
        return key in self._gf.fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._gf.fields)

    def __len__(self) -> int:
        return len(self._gf.fields)


class GGUFFile:
    """A parsed GGUF file: `metadata` (key -> Python value, decoded on first read), `fields` (key -> where its
    value lies) and `tensors` (name -> TensorInfo).

    Tensor data is read lazily through a read-only memory map (`raw`, `load`). `architecture`: the
    general.architecture the file must declare (None: any).
    """

    def __init__(self, path: str | os.PathLike, architecture: str | None = ARCHITECTURE):
        self.path = Path(path)
        regular_file(self.path, "GGUF file")       # a FIFO would block open() forever
        try:
            fh = open(self.path, "rb")
        except OSError as e:
            raise WeightsError(f"{self.path}: cannot open ({e.strerror or e})") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 24:
                raise WeightsError(f"{self.path}: not a GGUF file (only {size} bytes)")
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.file_size = size
        self.architecture = architecture
        self.fields: dict[str, Field] = {}
        self.metadata = Metadata(self)
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    def _parse(self):
        cur = _Cursor(self._mm, self.path)
        if bytes(self._mm[:4]) != GGUF_MAGIC:
            cur.fail("not a GGUF file (bad magic)")
        cur.skip(4, "magic")
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            cur.fail(f"unsupported GGUF version {self.version}")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # Each metadata entry needs >= 13 bytes (key length, type, 1-byte value); each tensor info >= 28.
        if (n_kv > MAX_KV or n_tensors > MAX_TENSORS
                or n_kv * 13 + n_tensors * 28 > self.file_size - cur.pos):
            cur.fail(f"absurd header counts ({n_tensors} tensors, {n_kv} metadata entries) "
                     f"for a {self.file_size}-byte file (limits {MAX_TENSORS} and {MAX_KV})")
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}", MAX_NAME_BYTES)
            vtype = cur.u32(f"type of {key}")
            if key in self.fields:
                cur.fail(f"duplicate metadata key {key}")
            self.fields[key] = cur.field(vtype, key)
            if key == "general.architecture":
                self._check_architecture()      # before the rest: a llama file is refused at its first key
        if self.architecture is not None and "general.architecture" not in self.fields:
            cur.fail(f"no general.architecture (must be {self.architecture!r})")
        infos = []
        for i in range(n_tensors):
            name = cur.string(f"tensor name #{i}", MAX_NAME_BYTES)
            n_dims = cur.u32(f"dimension count of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                cur.fail(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            ne = [cur.u64(f"shape of {name}") for _ in range(n_dims)]
            tcode = cur.u32(f"type of {name}")
            offset = cur.u64(f"offset of {name}")
            infos.append((name, ne, tcode, offset))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1):
            cur.fail(f"general.alignment must be a power of two, got {_short(alignment)}")
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
            nbytes = math.prod(ne[1:]) * (ne[0] // block) * block_bytes
            start = data_start + offset
            if offset % alignment:
                cur.fail(f"tensor {name}: offset {offset} is not aligned to {alignment}")
            if start + nbytes > self.file_size:
                cur.fail(f"truncated file: tensor {name} needs bytes up to {start + nbytes}, "
                         f"file has {self.file_size}")
            if name in self.tensors:
                cur.fail(f"duplicate tensor {name}")
            self.tensors[name] = TensorInfo(name, tuple(reversed(ne)), ttype, start, nbytes)

    def _check_architecture(self):
        if self.architecture is None:
            return
        arch = self.metadata["general.architecture"] if not self.fields["general.architecture"].is_array else None
        if arch != self.architecture:
            raise WeightsError(f"{self.path}: unsupported architecture {_short(arch)} "
                               f"(general.architecture must be {self.architecture!r})")

    def _decode(self, key: str, f: Field) -> Any:
        buf = self._mm
        if f.type == 6:
            # float32 -> the shortest decimal that round-trips (1e-06, not 9.99999997e-07), as configs write it.
            return float(str(np.float32(struct.unpack_from("<f", buf, f.offset)[0])))
        if f.type in _SCALARS:
            return struct.unpack_from(_SCALARS[f.type][0], buf, f.offset)[0]
        if f.type == _STRING:
            return _utf8(buf[f.offset:f.offset + f.count], key, self.path)
        if f.item_type == _STRING:
            return self._strings(f, key)
        arr = np.frombuffer(buf, dtype=_NUMPY[f.item_type], count=f.count, offset=f.offset)
        return arr.astype(bool).tolist() if f.item_type == 7 else arr.tolist()

    def _strings(self, f: Field, key: str) -> list[str]:
        """The vocabulary's 262,144 pieces: a tight loop (lengths were checked by the walk in _parse)."""
        buf, pos = self._mm, f.offset
        unpack = _LENGTH.unpack_from
        out = []
        append = out.append
        try:
            for _ in range(f.count):
                (n,) = unpack(buf, pos)
                pos += 8
                append(str(buf[pos:pos + n], "utf-8"))
                pos += n
        except UnicodeDecodeError:
            raise WeightsError(f"{self.path}: {key}[{len(out)}] is not valid UTF-8") from None
        return out

    def array_length(self, key: str) -> int | None:
        """Items of the array under `key` (without decoding it), or None when `key` is absent or not an array."""
        f = self.fields.get(key)
        return f.count if f is not None and f.is_array else None

    def facts(self) -> dict[str, Any]:
        """The metadata worth keeping beside the weights (name, license, sizes): single values outside
        tokenizer.ggml.*, strings up to MAX_FACT_BYTES, at most MAX_FACTS of them."""
        out = {}
        for key, f in self.fields.items():
            if len(out) == MAX_FACTS:
                break
            if not (key.startswith("tokenizer.ggml.") or f.is_array or (f.type == _STRING and
                                                                         f.count > MAX_FACT_BYTES)):
                out[key] = self.metadata[key]
        return out

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


def read_metadata(path: str | os.PathLike) -> Metadata:
    """Just the metadata of a GGUF file (plain Python values, each decoded when first read)."""
    return GGUFFile(path).metadata


def _short(value) -> str:
    """repr(value), cut short: a message stays one readable line whatever a file holds."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def config_from_gguf(gf: GGUFFile) -> Gemma3Config:
    """Architecture from GGUF metadata (llama.cpp's gemma3 keys); nothing assumed about model size.

    Every size is checked against the plausibility limits (SIZE_LIMITS) as it is read, before anything
    proportional to it is built; per-layer arrays are read only when their length is the layer count.
    """
    meta = gf.metadata
    arch = meta.get("general.architecture")
    if arch != ARCHITECTURE:
        raise WeightsError(f"{gf.path}: unsupported architecture {_short(arch)} "
                           f"(general.architecture must be {ARCHITECTURE!r})")

    def fail(message: str):
        raise WeightsError(f"{gf.path}: {message}")

    def single(key: str, default=None):
        """A value that must not be an array (refused without reading it)."""
        if gf.array_length(key) is not None:
            fail(f"metadata key {key} must be a single value, not an array")
        return meta.get(key, default)

    def get(key, kind, default=None):
        full = f"gemma3.{key}"
        n = gf.array_length(full)
        if n is not None:
            if not 1 <= n <= SIZE_LIMITS["num_hidden_layers"]:
                fail(f"metadata key {full} has {n} per-layer values")
            values = meta[full]
            if any(v != values[0] for v in values):
                fail(f"per-layer values of {full} are not supported")
            value = values[0]
        else:
            value = meta.get(full, default)
        if value is None:
            fail(f"missing metadata key {full}")
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            fail(f"metadata key {full} must be an integer, got {_short(value)}")
        if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not math.isfinite(value)):
            fail(f"metadata key {full} must be a finite number, got {_short(value)}")
        return kind(value)

    def size(key, name, default=None) -> int:
        value = get(key, int, default)
        problem = size_problem(name, value)
        if problem:
            fail(f"gemma3.{key}: {problem}")
        return value

    n_layers = size("block_count", "num_hidden_layers")
    hidden = size("embedding_length", "hidden_size")
    heads = size("attention.head_count", "num_attention_heads")
    head_dim = size("attention.key_length", "head_dim", hidden // heads or 1)
    if get("attention.value_length", int, head_dim) != head_dim:
        fail("attention.value_length differs from attention.key_length")
    embd = gf.tensors.get("token_embd.weight")
    n_tokens = gf.array_length("tokenizer.ggml.tokens")
    vocab = n_tokens if n_tokens is not None else (embd.shape[0] if embd else 0)
    if not vocab:
        fail("no vocabulary (no tokenizer.ggml.tokens, no token_embd.weight)")
    if size_problem("vocab_size", vocab):
        fail(f"vocabulary: {size_problem('vocab_size', vocab)}")
    key = "gemma3.attention.sliding_window_pattern"
    n = gf.array_length(key)
    if n is not None:
        # llama.cpp's per-layer form: true = sliding-window layer.
        if n != n_layers:
            fail(f"{key} has {n} entries for {n_layers} layers")
        layer_types = tuple(SLIDING if s else FULL for s in meta[key])
    else:
        pattern = meta.get(key, 6)
        if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern <= 0:
            fail(f"invalid {key} {_short(pattern)}")
        layer_types = default_layer_types(n_layers, pattern)
    scaling = single("gemma3.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        fail(f"unsupported gemma3.rope.scaling.type {_short(scaling)}")
    factor = get("rope.scaling.factor", float, 1.0) if scaling == "linear" else 1.0
    # llama.cpp: attention scale is head_dim ** -0.5, except Gemma 3 27B (62 layers): hidden / heads.
    scalar = get("attention.query_pre_attn_scalar", float, hidden / heads if n_layers == 62 else head_dim)
    softcaps = {}
    for name in ("final_logit_softcapping", "attn_logit_softcapping"):
        value = single(f"gemma3.{name}")
        softcaps[name] = get(name, float) if value else None
    try:
        return Gemma3Config(
            vocab_size=vocab, hidden_size=hidden,
            intermediate_size=size("feed_forward_length", "intermediate_size"),
            num_hidden_layers=n_layers, num_attention_heads=heads,
            num_key_value_heads=size("attention.head_count_kv", "num_key_value_heads", heads), head_dim=head_dim,
            rms_norm_eps=get("attention.layer_norm_rms_epsilon", float, 1e-6),
            rope_theta=get("rope.freq_base", float, 1_000_000.0),
            rope_local_base_freq=get("rope.freq_base_swa", float, 10_000.0),
            rope_scaling_factor=factor,
            sliding_window=size("attention.sliding_window", "sliding_window"),
            layer_types=layer_types, query_pre_attn_scalar=scalar,
            max_position_embeddings=size("context_length", "max_position_embeddings"),
            tie_word_embeddings="output.weight" not in gf.tensors,
            bos_token_id=single("tokenizer.ggml.bos_token_id", 2),
            eos_token_id=single("tokenizer.ggml.eos_token_id", 1),
            pad_token_id=single("tokenizer.ggml.padding_token_id", 0),
            **softcaps,
        )
    except ValueError as e:
        raise WeightsError(f"{gf.path}: {e}") from None


def load_gguf_tensors(gf: GGUFFile, config: Gemma3Config, read: bool = True, check: bool = True
                      ) -> dict[str, torch.Tensor]:
    """Dequantized float32 tensors under our names, after a strict name and shape check of the whole file.

    read=False: only the check; check=False: no check (it was done already).
    """
    table = tensor_table(config.num_hidden_layers, config.tie_word_embeddings)
    to_ours = {g: (ours, norm) for ours, g, norm in table}
    if check:
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
