"""Native int8 kernels in C, compiled on first use with the system's C compiler and called via ctypes.

One build per CPU class, chosen at run time from the CPU's features (PATHS, best first):
- avx512:    x86-64 AVX-512 VNNI (q8_avx512.c)
- avxvnni:   x86-64 AVX2 + AVX-VNNI, 256-bit VPDPBUSD (q8_simd.c; Intel Alder Lake and later, AMD Zen 5)
- avx2:      x86-64 AVX2 + FMA (q8_simd.c; most laptops and servers since 2015)
- neon-i8mm: ARM64 with the dot-product and int8 matrix extensions (q8_simd.c; Apple M2+, recent phones)
- neon:      ARM64 with the dot-product extension (q8_simd.c; Apple M1, Cortex-A76 and later)
- scalar:    portable C (q8_ref.c): the reference the tests compare the others against; only when forced
All builds share one API and one layout of converted weights. TINYGEMMA_KERNELS in the environment forces a
path by name (e.g. avx2 on an AVX-512 machine), or turns the native kernels off (0): the fast path then uses
PyTorch's kernels. Where no native path can run, the reason and its cost are printed once on stderr.
Shared objects are cached under TINYGEMMA_CACHE (default ~/.cache/tinygemma)/kernels, keyed by source and flags,
each beside a .sha256 file written when it was compiled: one whose bytes no longer match is rebuilt, never loaded.
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
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_path, atomic_write_text

HERE = Path(__file__).parent
# Activation values per scale in the layers' products: 64 costs +0.47% perplexity against float32 on the
# first 30 chunks of the reference text, 128 +0.78%, 32 +0.33% (and is the slowest).
BLOCK = 64
BASE_FLAGS = ["-O3", "-shared", "-fPIC", f"-DBLOCK={BLOCK}"]
ENV = "TINYGEMMA_KERNELS"
# What the PyTorch path costs against the native kernels (decode and prefill, docs/performance.md).
FALLBACK_COST = "about 2-4x slower"


@dataclass(frozen=True)
class KernelPath:
    name: str
    source: str                 # file beside this one
    flags: tuple[str, ...]      # compiler flags for the instruction set
    machine: str                # "x86_64", "arm64" or "any"
    needs: tuple[str, ...]      # CPU features (cpu_features() names)


PATHS = (
    KernelPath("avx512", "q8_avx512.c",
               ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mfma"), "x86_64",
               ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")),
    KernelPath("avxvnni", "q8_simd.c", ("-DTG_AVXVNNI", "-mavx2", "-mfma", "-mf16c", "-mavxvnni"), "x86_64",
               ("avx2", "fma", "f16c", "avx_vnni")),
    KernelPath("avx2", "q8_simd.c", ("-DTG_AVX2", "-mavx2", "-mfma", "-mf16c"), "x86_64", ("avx2", "fma", "f16c")),
    KernelPath("neon-i8mm", "q8_simd.c", ("-DTG_NEON", "-DTG_I8MM", "-march=armv8.2-a+dotprod+i8mm"), "arm64",
               ("asimddp", "i8mm")),
    KernelPath("neon", "q8_simd.c", ("-DTG_NEON", "-march=armv8.2-a+dotprod"), "arm64", ("asimddp",)),
    KernelPath("scalar", "q8_ref.c", (), "any", ()),
)
BY_NAME = {p.name: p for p in PATHS}
OFF = ("0", "off", "torch", "none")


def cache_dir() -> Path:
    return Path(os.environ.get("TINYGEMMA_CACHE", Path.home() / ".cache" / "tinygemma")) / "kernels"


def machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


# macOS names (sysctl hw.optional.arm.FEAT_*, machdep.cpu.*features) -> the Linux /proc/cpuinfo names used here.
_MAC_ARM = {"FEAT_DotProd": "asimddp", "FEAT_I8MM": "i8mm", "FEAT_BF16": "bf16"}
_MAC_X86 = {"avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avxvnni": "avx_vnni", "avx2": "avx2",
            "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
            "avx512dq": "avx512dq"}


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags in Linux /proc/cpuinfo spelling (empty where they cannot be read)."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    key = line.split(":", 1)[0].strip().lower()
                    if key in ("flags", "features"):
                        return frozenset(line.split(":", 1)[1].split())
        except OSError:
            pass
        return frozenset()
    if sys.platform == "darwin":
        found = set()
        if machine() == "arm64":
            for feat, name in _MAC_ARM.items():
                if _sysctl(f"hw.optional.arm.{feat}") == "1":
                    found.add(name)
        else:
            for key in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
                found |= {_MAC_X86[w] for w in _sysctl(key).lower().replace(".", "").split() if w in _MAC_X86}
        return frozenset(found)
    return frozenset()


def _sysctl(key: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.cache
def cpu_model() -> str:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.split(":", 1)[0].strip() in ("model name", "Model", "Hardware"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    elif sys.platform == "darwin":
        return _sysctl("machdep.cpu.brand_string") or platform.processor()
    return platform.processor() or machine()


def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16, AMX or ARM BF16): else PyTorch emulates it,
    and bfloat16 matrix products cost many times their float32 ones."""
    return bool(cpu_features() & {"avx512_bf16", "amx_bf16", "bf16"})


def why_not(path: KernelPath) -> str | None:
    """Why this CPU cannot run the path's instructions ("no avx512_vnni", "not an arm64 CPU"), or None if it can."""
    if path.machine not in ("any", machine()):
        return f"not an {path.machine} CPU"
    missing = [f for f in path.needs if f not in cpu_features()]
    return f"no {', '.join(missing)}" if missing else None


def runnable(path: KernelPath) -> bool:
    return why_not(path) is None


def native_paths() -> list[KernelPath]:
    """The paths this CPU runs, fastest first, without the scalar one (never chosen on its own: PyTorch beats it)."""
    return [p for p in PATHS if p.name != "scalar" and runnable(p)]


def best_path() -> KernelPath | None:
    return next(iter(native_paths()), None)


def _compilers() -> list[str]:
    names = [os.environ["CC"]] if os.environ.get("CC") else []
    return [c for c in dict.fromkeys(filter(None, (shutil.which(n) for n in names + ["cc", "gcc", "clang"])))]


def _openmp_variants() -> list[list[str]]:
    """OpenMP flags to try, best first; the last, none, builds single-threaded kernels (Apple's clang has no
    OpenMP of its own: Homebrew's libomp is used where it is installed)."""
    variants = [["-fopenmp"]]
    if sys.platform == "darwin":
        for prefix in ("/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"):
            if Path(prefix).is_dir():
                variants.append(["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include", f"-L{prefix}/lib", "-lomp"])
    return variants + [[]]


class _CompileError(Exception):
    pass


def build(path: KernelPath, out_dir: Path) -> tuple[Path, bool]:
    """Compile a kernel path into out_dir (atomically); returns (shared object, whether it uses OpenMP).

    A cached shared object is reused only if its bytes match the SHA-256 recorded when it was compiled."""
    compilers = _compilers()
    if not compilers:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    source = HERE / path.source
    # The key covers every C file here: the source and what it includes (attention.c, matmul.c, decode.c).
    text = b"".join(f.read_bytes() for f in sorted(HERE.glob("*.c")))
    errors = []
    for compiler in compilers:
        for omp in _openmp_variants():
            flags = [*BASE_FLAGS, *path.flags, *omp]
            key = hashlib.sha256(text + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
            target = out_dir / f"q8-{path.name}-{key}.so"
            if verified(target):
                return target, bool(omp)
            out_dir.mkdir(parents=True, exist_ok=True)
            try:
                with atomic_path(target) as tmp:
                    try:
                        result = subprocess.run([compiler, *flags, "-o", str(tmp), str(source)],
                                                capture_output=True, text=True, timeout=300)
                    except (OSError, subprocess.SubprocessError) as e:
                        raise _CompileError(str(e)) from None
                    if result.returncode:
                        raise _CompileError((result.stderr.strip().splitlines() or ["failed"])[-1])
                    digest = _sha256(tmp)
                atomic_write_text(_stamp(target), digest)
            except _CompileError as e:
                errors.append(f"{Path(compiler).name}: {e}")
                continue
            return target, bool(omp)
    raise RuntimeError(f"compiling {source.name} for {path.name} failed ({errors[-1]})")


def _stamp(so: Path) -> Path:
    return so.with_name(so.name + ".sha256")


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verified(so: Path) -> bool:
    """Whether `so` is a regular file whose bytes match the SHA-256 recorded when build() compiled it."""
    try:
        if not so.is_file() or so.is_symlink():
            return False
        return _stamp(so).read_text().strip() == _sha256(so)
    except (OSError, UnicodeDecodeError):
        return False


class Q8:
    """ctypes bindings of one kernel build: `path` names its CPU class, `threaded` whether it uses OpenMP."""

    def __init__(self, so: Path, path: KernelPath, threaded: bool):
        self.path, self.threaded = path, threaded
        if not verified(so):      # checked here too: nothing but what build() compiled is ever loaded
            raise RuntimeError(f"{so}: not the shared object tinygemma compiled (SHA-256 mismatch)")
        lib = ctypes.CDLL(str(so))
        p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        lib.tg_quantize.argtypes = [p, i64, i64, p, p]
        lib.tg_quantize_rows.argtypes = [p, i64, i64, p, f32, p, p, p]
        lib.tg_quantize_geglu.argtypes = [p, i64, i64, p, p, p, p]
        lib.tg_matmul_rows.argtypes = [p, p, p, i64, i64, p, p, i64, p, i64]
        lib.tg_matmul_q8_0.argtypes = [p, p, i64, i64, p, p, i64, p, i64]
        lib.tg_rmsnorm.argtypes = [p, i64, i64, p, f32, i32, p]
        lib.tg_attend.argtypes = [p, i64, i64, i64, i64, p, p, i64, i64, i64, i64, p, i64, p, i64, f32, p]
        lib.tg_attend_rows.argtypes = [p, p, p, p, i64, i64, i64, i64, p, p, p, p, p, p, i64, f32, p]
        lib.tg_decode_layer.argtypes = [p, i64, p, p, p, p, p, p, p, p, p, p]
        lib.tg_decode_layer.restype = ctypes.c_int
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
        kc, vc, pc, slots, lengths, head_strides = claim_slots(caches)
        q, k, v, q_pos = q.contiguous(), k.contiguous(), v.contiguous(), q_pos.contiguous()
        out = torch.empty(b, h, d)
        self.lib.tg_attend_rows(q.data_ptr(), k.data_ptr(), v.data_ptr(), q_pos.data_ptr(), b, h, k.shape[1], d,
                                kc.data_ptr(), vc.data_ptr(), pc.data_ptr(), slots.data_ptr(), lengths.data_ptr(),
                                head_strides.data_ptr(), window or 0, scale, out.data_ptr())
        return out

    def decode_layer(self, x: torch.Tensor, layer: "DecodeLayer", caches: list, q_pos: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor) -> None:
        """One block's decode step for B sequences in one call (decode.c): x (B, hidden) float32, contiguous,
        updated in place; each row's key and value go to its own cache (as attend_rows); cos, sin (B, D)."""
        tables = claim_slots(caches)
        cos, sin, q_pos = cos.contiguous(), sin.contiguous(), q_pos.contiguous()
        ptrs = layer.pointers(cos, sin)
        if self.lib.tg_decode_layer(x.data_ptr(), x.shape[0], ptrs.data_ptr(), layer.dims.data_ptr(),
                                    layer.scalars.data_ptr(), *(t.data_ptr() for t in tables),
                                    q_pos.data_ptr()):
            raise MemoryError("decode_layer: out of memory for its scratch buffers")

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


def claim_slots(caches: list) -> list[torch.Tensor]:
    """For a native decode step over per-row caches (batch 1 each, float32): claim one slot in each (which may
    grow its buffers: addresses are read after) and return the kernels' tables: key, value and position buffer
    addresses, slots, lengths to attend over, head strides (each (B,) int64)."""
    table = []
    for cache in caches:
        slot, n = cache.claim_one()
        table.append((cache.k.data_ptr(), cache.v.data_ptr(), cache.pos.data_ptr(), slot, n, cache.k.stride(1)))
    return list(torch.tensor(table, dtype=torch.int64).T.contiguous())


class DecodeLayer:
    """What decode_layer needs of one block of the native fast model: its tensors' addresses (the tensors are
    kept referenced here) and sizes."""

    def __init__(self, tensors: list[torch.Tensor], dims: list[int], eps: float, scale: float):
        self.tensors = [t.contiguous() for t in tensors]        # in decode.c's P_* order, without cos/sin
        self.addresses = [t.data_ptr() for t in self.tensors]
        self.dims = torch.tensor(dims, dtype=torch.int64)        # decode.c's D_* order
        self.scalars = torch.tensor([eps, scale], dtype=torch.float32)

    def pointers(self, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.addresses + [cos.data_ptr(), sin.data_ptr()], dtype=torch.int64)


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


def load(name: str) -> Q8:
    """The kernels of one path by name, compiled if needed (RuntimeError where this CPU or compiler can't)."""
    why = why_not(BY_NAME[name])
    if why:
        raise RuntimeError(f"this CPU cannot run the {name} kernels ({why})")
    return _load(BY_NAME[name])


@functools.cache
def _load(path: KernelPath) -> Q8:
    so, threaded = build(path, cache_dir())
    return Q8(so, path, threaded)


def _say(message: str) -> None:
    print(f"tinygemma: {message}", file=sys.stderr)


@functools.cache
def q8() -> Q8 | None:
    """The kernels of the best path for this CPU (or the one TINYGEMMA_KERNELS names), or None where no native
    path can run here: the reason and its cost go to stderr once."""
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted in OFF:
        return None
    path = BY_NAME.get(wanted)
    if path is None and wanted != "auto":
        _say(f"{ENV}={wanted} is not a kernel path ({', '.join(BY_NAME)}, 0 or auto): "
             f"using {getattr(best_path(), 'name', 'the PyTorch path')}")
    elif path is not None and why_not(path):
        _say(f"{ENV}={wanted}: this CPU cannot run it ({why_not(path)}): "
             f"using {getattr(best_path(), 'name', 'the PyTorch path')}")
        path = None
    path = path or best_path()
    if path is None:
        _say(f"this CPU ({cpu_model()}, {machine()}) has none of the instruction sets of the native kernels "
             f"(AVX2, ARM dot product): using the PyTorch path, {FALLBACK_COST}")
        return None
    try:
        kernels = _load(path)
    except (RuntimeError, OSError) as e:
        _say(f"{e}: using the PyTorch path, {FALLBACK_COST}")
        return None
    if not kernels.threaded:
        _say(f"the {path.name} kernels were compiled without OpenMP (none found for the compiler): one thread")
    return kernels


def machine_facts() -> dict:
    """The CPU facts benchmarks record beside every figure (bench/speed.py, bench/load.py)."""
    d = describe()
    return {"cpu_model": d["cpu"], "cpu_features": d["features"], "native_bf16": d["native_bf16"],
            "kernel_path": d["kernel_path"], "kernels_forced": d["forced"]}


def describe() -> dict:
    """What the fast path runs on here: the kernel path, the CPU and its relevant features (for info/bench)."""
    kernels = q8()
    forced = os.environ.get(ENV, "").strip().lower()
    relevant = sorted(cpu_features() & {f for p in PATHS for f in p.needs} | (cpu_features() & {
        "avx512_bf16", "amx_bf16", "amx_int8", "bf16"}))
    return {"kernel_path": kernels.path.name if kernels else "pytorch",
            "threaded": bool(kernels and kernels.threaded),
            "cpu": cpu_model(), "machine": machine(), "features": relevant, "native_bf16": native_bf16(),
            "forced": forced if forced in OFF or (kernels and kernels.path.name == forced) else None}
