"""Each kernel build against the scalar C build through a C harness (tests/native/harness.c), without Python in
the loop: the x86-64 builds this CPU runs natively, and the ARM64 NEON builds cross-compiled with Debian's
aarch64 compiler and run under qemu-user (cortex-a76: dot product, no i8mm; max: i8mm too). .ci/run installs
gcc-aarch64-linux-gnu and qemu-user; where they are missing the ARM cases skip, except in CI, where they fail."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tinygemma import kernels as native

HARNESS = Path(__file__).parent / "native" / "harness.c"
KERNELS = Path(native.__file__).parent
CROSS = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"
# qemu CPU model per ARM build: the plainer build must run on a CPU without i8mm.
QEMU_CPU = {"neon": "cortex-a76", "neon-i8mm": "max"}


def build_and_run(tmp_path: Path, compiler: str, path: native.KernelPath, runner: list[str]) -> str:
    base = ["-O2", f"-DBLOCK={native.BLOCK}"]
    ref, simd, exe = tmp_path / "ref.o", tmp_path / "simd.o", tmp_path / "harness"
    for cmd in ([compiler, *base, "-c", "-DTG(n)=ref_##n", "-o", ref, KERNELS / "q8_ref.c"],
                [compiler, *base, "-O3", "-fopenmp", "-c", *path.flags, "-o", simd, KERNELS / path.source],
                [compiler, *base, "-fopenmp", "-o", exe, HARNESS, ref, simd, "-lm"]):
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    run = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def summary(out: str) -> tuple[int, int]:
    last = out.strip().splitlines()[-1]          # "N passed, M failed"
    passed, failed = (int(part.split()[0]) for part in last.split(", "))
    return passed, failed


X86 = [p for p in native.PATHS if p.machine == "x86_64"]


@pytest.mark.parametrize("path", X86, ids=[p.name for p in X86])
def test_x86_builds_against_scalar(tmp_path, path):
    if not native.runnable(path):
        pytest.skip(f"this CPU cannot run {path.name}")
    compiler = next(iter(native._compilers()), None)
    if compiler is None:
        pytest.skip("no C compiler")
    passed, failed = summary(build_and_run(tmp_path, compiler, path, []))
    assert failed == 0 and passed >= 30


ARM = [p for p in native.PATHS if p.machine == "arm64"]


@pytest.mark.parametrize("path", ARM, ids=[p.name for p in ARM])
def test_arm_neon_builds_under_qemu(tmp_path, path):
    missing = [tool for tool in (CROSS, QEMU) if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {', '.join(missing)} (.ci/run)")
        pytest.skip(f"needs {', '.join(missing)} (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    out = build_and_run(tmp_path, CROSS, path, [QEMU, "-cpu", QEMU_CPU[path.name], "-L", SYSROOT])
    passed, failed = summary(out)
    assert failed == 0 and passed >= 30
