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
COMPILE_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mfma",
                 "-fopenmp", "-shared", "-fPIC"]


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
        lib.tg_quantize.argtypes = [p, i64, i64, p, f32, p, p]
        lib.tg_quantize_geglu.argtypes = [p, i64, i64, p, p, p]
        lib.tg_matmul.argtypes = [p, p, i64, i64, p, p, i32, i64, p, i64]
        lib.tg_rmsnorm.argtypes = [p, i64, i64, p, f32, i32, p]
        lib.tg_attend.argtypes = [p, i64, i64, i64, i64, p, p, i64, i64, i64, i64, p, i64, p, i64, f32, p]
        for fn in (lib.tg_quantize, lib.tg_quantize_geglu, lib.tg_matmul, lib.tg_rmsnorm, lib.tg_attend):
            fn.restype = None
        self.lib = lib

    def quantize(self, x: torch.Tensor, gain: torch.Tensor | None = None, eps: float = 0.0):
        """(M, K) float32 -> (uint8 (M, K), lane scales (M, K/64, 16)); RMS-normalized first with `gain`."""
        m, k = x.shape
        x = x.contiguous()
        xq = torch.empty(m, k, dtype=torch.uint8)
        xs = torch.empty(m, k // 64, 16)
        self.lib.tg_quantize(x.data_ptr(), m, k, None if gain is None else gain.data_ptr(), eps,
                             xq.data_ptr(), xs.data_ptr())
        return xq, xs

    def quantize_geglu(self, gate_up: torch.Tensor):
        """Quantize gelu_tanh(gate) * up for gate_up (M, 2I) float32 = [gate | up]."""
        m, i = gate_up.shape[0], gate_up.shape[1] // 2
        gate_up = gate_up.contiguous()
        tmp = torch.empty(m, i)
        xq = torch.empty(m, i, dtype=torch.uint8)
        xs = torch.empty(m, i // 64, 16)
        self.lib.tg_quantize_geglu(gate_up.data_ptr(), m, i, tmp.data_ptr(), xq.data_ptr(), xs.data_ptr())
        return xq, xs

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

    def matmul(self, xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, n: int,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """x @ W.T as float32 (M, n). w, ws: from pack(); ws 1-D = row scales, 2-D = Q8_0 scales."""
        m, k = xq.shape
        if out is None:
            out = torch.empty(m, n)
        self.lib.tg_matmul(xq.data_ptr(), xs.data_ptr(), m, k, w.data_ptr(), ws.data_ptr(), int(ws.dim() == 2),
                           n, out.data_ptr(), out.stride(0))
        return out


TILE = 4


def pack(q: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (N, K) int8 and scales ((N,) per row or (N, K/32) per group) in the kernels' tile layout:
    rows padded to a multiple of 4, each 64-byte chunk of a tile's 4 rows stored together."""
    n, k = q.shape
    pad = -n % TILE
    q = torch.nn.functional.pad(q, (0, 0, 0, pad))
    packed = q.reshape(-1, TILE, k // 64, 64).transpose(1, 2).reshape(n + pad, k).contiguous()
    scales = torch.nn.functional.pad(scales.float(), (0, 0, 0, pad) if scales.dim() == 2 else (0, pad))
    if scales.dim() == 2:
        scales = scales.reshape(-1, TILE, k // 64, 2).transpose(1, 2).reshape(n + pad, k // 32).contiguous()
    return packed, scales


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of packed weights, back in plain (N, K) order."""
    k = packed.shape[1]
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
