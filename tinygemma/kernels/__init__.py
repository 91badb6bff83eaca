"""Native int8 kernels (q8.c), compiled on first use with the system's C compiler and called via ctypes.

They need x86-64 with AVX-512 VNNI and a C compiler (gcc or cc). Where either is missing, or with
TINYGEMMA_KERNELS=0 in the environment, `q8()` returns None and the fast path uses PyTorch's kernels.
The shared object is cached next to the converted weights (TINYGEMMA_CACHE, default ~/.cache/tinygemma).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("q8.c")
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
# Activation values per scale in the layers' products: 64 costs +0.47% perplexity against float32 on the
# first 30 chunks of the reference text, 128 +0.78%, 32 +0.33% (and is the slowest).
BLOCK = 64
COMPILE_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mfma",
                 "-fopenmp", "-shared", "-fPIC", f"-DBLOCK={BLOCK}"]


def cache_dir() -> Path:
    return Path(os.environ.get("TINYGEMMA_CACHE", Path.home() / ".cache" / "tinygemma")) / "kernels"


def cpu_supported() -> bool:
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        return False
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo")
                      if line.startswith("flags")), [])
    except OSError:
        return False
    return all(f in flags for f in CPU_FLAGS)


def build(out_dir: Path) -> Path:
    """Compile q8.c into out_dir (atomically) and return the shared object's path."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc or cc) on PATH")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
    target = out_dir / f"q8-{key}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    result = subprocess.run([compiler, *COMPILE_FLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True,
                            text=True)
    if result.returncode:
        raise RuntimeError(f"compiling {SOURCE.name} failed: {result.stderr.strip().splitlines()[-1:]}")
    os.replace(tmp, target)
    return target


class Q8:
    """ctypes bindings of q8.c."""

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        lib.tg_quantize.argtypes = [p, i64, i64, p, p]
        lib.tg_quantize_rows.argtypes = [p, i64, i64, p, f32, p, p, p]
        lib.tg_quantize_geglu.argtypes = [p, i64, i64, p, p, p, p]
        lib.tg_matmul_rows.argtypes = [p, p, p, i64, i64, p, p, i64, p, i64]
        lib.tg_matmul_q8_0.argtypes = [p, p, i64, i64, p, p, i64, p, i64]
        lib.tg_rmsnorm.argtypes = [p, i64, i64, p, f32, i32, p]
        lib.tg_attend.argtypes = [p, i64, i64, i64, i64, p, p, i64, i64, i64, i64, p, i64, p, i64, f32, p]
        lib.tg_attend_rows.argtypes = [p, p, p, p, i64, i64, i64, i64, p, p, p, p, p, p, i64, f32, p]
        for fn in (lib.tg_quantize, lib.tg_quantize_rows, lib.tg_quantize_geglu, lib.tg_matmul_rows,
                   lib.tg_matmul_q8_0, lib.tg_rmsnorm, lib.tg_attend, lib.tg_attend_rows):
            fn.restype = None
        self.lib = lib

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For matmul_q8_0: (M, K) float32 -> (uint8 (M, K), lane scales (M, K/64, 16)). K % 64 == 0."""
        m, k = x.shape
        x = x.contiguous()
        xq = torch.empty(m, k, dtype=torch.uint8)
        xs = torch.empty(m, k // 64, 16)
        self.lib.tg_quantize(x.data_ptr(), m, k, xq.data_ptr(), xs.data_ptr())
        return xq, xs

    def quantize_rows(self, x: torch.Tensor, gain: torch.Tensor | None = None, eps: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For matmul_rows: (M, K) float32 -> (int8 (M, K), block scales (M, K/BLOCK), offset corrections (M,)),
        RMS-normalized first with `gain`. K % BLOCK == 0."""
        m, k = x.shape
        x = x.contiguous()
        xq, xs, xc = torch.empty(m, k, dtype=torch.int8), torch.empty(m, k // BLOCK), torch.empty(m)
        self.lib.tg_quantize_rows(x.data_ptr(), m, k, None if gain is None else gain.data_ptr(), eps,
                                  xq.data_ptr(), xs.data_ptr(), xc.data_ptr())
        return xq, xs, xc

    def quantize_geglu(self, gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """quantize_rows of gelu_tanh(gate) * up, for gate_up (M, 2I) float32 = [gate | up]."""
        m, i = gate_up.shape[0], gate_up.shape[1] // 2
        gate_up = gate_up.contiguous()
        tmp = torch.empty(m, i)
        xq, xs, xc = torch.empty(m, i, dtype=torch.int8), torch.empty(m, i // BLOCK), torch.empty(m)
        self.lib.tg_quantize_geglu(gate_up.data_ptr(), m, i, tmp.data_ptr(), xq.data_ptr(), xs.data_ptr(),
                                   xc.data_ptr())
        return xq, xs, xc

    def rmsnorm(self, x: torch.Tensor, gain: torch.Tensor, eps: float, add_to: torch.Tensor | None = None
                ) -> torch.Tensor:
        """x / rms(x) * gain over the last dimension (float32, contiguous); with add_to, adds the result to it
        in place and returns it."""
        k = x.shape[-1]
        out = torch.empty_like(x) if add_to is None else add_to
        self.lib.tg_rmsnorm(x.data_ptr(), x.numel() // k, k, gain.data_ptr(), eps, int(add_to is not None),
                            out.data_ptr())
        return out

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pos: torch.Tensor,
               q_pos: torch.Tensor, window: int | None, scale: float) -> torch.Tensor:
        """Softmax attention of one query per sequence: q (B, H, D); k, v (B, Hkv, S, D) float32 sharing
        strides, last dimension contiguous; k_pos (B, S), q_pos (B,) int64. Returns (B, H, D)."""
        b, h, d = q.shape
        q, k_pos, q_pos = q.contiguous(), k_pos.contiguous(), q_pos.contiguous()
        out = torch.empty(b, h, d)
        self.lib.tg_attend(q.data_ptr(), b, h, k.shape[1], d, k.data_ptr(), v.data_ptr(), k.shape[2],
                           k.stride(0), k.stride(1), k.stride(2), k_pos.data_ptr(), k_pos.stride(0),
                           q_pos.data_ptr(), window or 0, scale, out.data_ptr())
        return out

    def attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, caches: list,
                    window: int | None, scale: float) -> torch.Tensor:
        """One decode step's attention for separate sequences, each with its own float32 cache (batch 1, a
        KVCache or RingKVCache): row b's new key and value (k, v: (B, Hkv, D)) are written to its cache at
        position q_pos[b], then its query (q: (B, H, D)) attends over it. Returns (B, H, D)."""
        b, h, d = q.shape
        table = []
        for cache in caches:
            slot, n = cache.claim_one()      # may grow the buffers: addresses after it
            table.append((cache.k.data_ptr(), cache.v.data_ptr(), cache.pos.data_ptr(), slot, n, cache.k.stride(1)))
        kc, vc, pc, slots, lengths, head_strides = torch.tensor(table, dtype=torch.int64).T.contiguous()
        q, k, v, q_pos = q.contiguous(), k.contiguous(), v.contiguous(), q_pos.contiguous()
        out = torch.empty(b, h, d)
        self.lib.tg_attend_rows(q.data_ptr(), k.data_ptr(), v.data_ptr(), q_pos.data_ptr(), b, h, k.shape[1], d,
                                kc.data_ptr(), vc.data_ptr(), pc.data_ptr(), slots.data_ptr(), lengths.data_ptr(),
                                head_strides.data_ptr(), window or 0, scale, out.data_ptr())
        return out

    def matmul_rows(self, x: tuple[torch.Tensor, torch.Tensor, torch.Tensor], w: torch.Tensor, ws: torch.Tensor,
                    n: int) -> torch.Tensor:
        """x @ W.T as float32 (M, n): x from quantize_rows, (w, ws) from pack_rows."""
        xq, xs, xc = x
        m, k = xq.shape
        out = torch.empty(m, n)
        self.lib.tg_matmul_rows(xq.data_ptr(), xs.data_ptr(), xc.data_ptr(), m, k, w.data_ptr(), ws.data_ptr(), n,
                                out.data_ptr(), n)
        return out

    def matmul_q8_0(self, x: tuple[torch.Tensor, torch.Tensor], w: torch.Tensor, ws: torch.Tensor, n: int
                    ) -> torch.Tensor:
        """x @ W.T as float32 (M, n): x from quantize, (w, ws) from pack_q8_0."""
        xq, xs = x
        m, k = xq.shape
        out = torch.empty(m, n)
        self.lib.tg_matmul_q8_0(xq.data_ptr(), xs.data_ptr(), m, k, w.data_ptr(), ws.data_ptr(), n, out.data_ptr(),
                                n)
        return out


TILE = 4        # weight rows per tile


def _tiles(q: torch.Tensor) -> torch.Tensor:
    """Rows padded with zeros to a multiple of TILE, each 64-byte chunk of a tile's rows stored together."""
    n, k = q.shape
    q = torch.nn.functional.pad(q, (0, 0, 0, -n % TILE))
    return q.reshape(-1, TILE, k // 64, 64).transpose(1, 2).reshape(-1, k).contiguous()


def pack_rows(q: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's int8 weights (N, K) and row scales (N,) for matmul_rows: uint8 (int8 + 128) in tiles."""
    packed = (_tiles(q).view(torch.uint8) ^ 0x80).contiguous()
    return packed, torch.nn.functional.pad(scales.float(), (0, -len(scales) % TILE))


def pack_q8_0(q: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q8_0 table (N, K) int8 with scales (N, K/32) for matmul_q8_0: tiles, the scales laid out alike."""
    n, k = q.shape
    s = torch.nn.functional.pad(scales.float(), (0, 0, 0, -n % TILE))
    return _tiles(q), s.reshape(-1, TILE, k // 64, 2).transpose(1, 2).reshape(-1, k // 32).contiguous()


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of packed weights as int8, back in plain (N, K) order."""
    k = packed.shape[1]
    if packed.dtype == torch.uint8:
        packed = (packed ^ 0x80).view(torch.int8)
    return packed.reshape(-1, k // 64, TILE, 64).transpose(1, 2).reshape(-1, k)[:n]


@functools.cache
def q8() -> Q8 | None:
    """The compiled kernels, or None where they cannot run here (reason on stderr once)."""
    if os.environ.get("TINYGEMMA_KERNELS", "1") == "0" or not cpu_supported():
        return None
    try:
        return Q8(build(cache_dir()))
    except (RuntimeError, OSError) as e:
        print(f"tinygemma: native kernels unavailable ({e}); using PyTorch kernels", file=sys.stderr)
        return None
