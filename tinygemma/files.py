"""Files the project writes and opens: written under a temporary name and renamed, so a crash or a full disk
leaves the previous good file (or none) and never half of one; opened only when they are regular files."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from .errors import TinyGemmaError


class FileWriteError(TinyGemmaError, OSError):
    """A file could not be written (full disk, no permission, a directory in the way); nothing was replaced."""


def describe_os_error(e: OSError, path) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{path}: no space left on the device"
    if e.errno == errno.EFBIG:
        return f"{path}: file too large for the file system or the process's size limit"
    return f"{path}: {e.strerror or e}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; when the block ends without error it is renamed over `path`.

    On any error the temporary file is removed and `path` is left as it was. OSErrors (ENOSPC...) become a
    one-line FileWriteError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:   # the data reaches the disk before the name does
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if isinstance(e, TinyGemmaError):
            raise
        raise FileWriteError(describe_os_error(e, path)) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs):
    """open() for writing through a temporary file renamed over `path` on success (see atomic_path)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def check_writable_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Checks before any work starts that `path` can be written as a file: not a directory, parent exists
    (or can be created) and is writable. Returns the Path."""
    path = Path(path)
    if path.is_dir():
        raise FileWriteError(f"{path}: {what} is a directory, expected a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise FileWriteError(f"{parent}: is not a directory (parent of the {what} {path.name})")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FileWriteError(describe_os_error(e, parent)) from None
    if not os.access(parent, os.W_OK):
        raise FileWriteError(f"{parent}: not writable (for the {what})")
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Checks before any work starts that `path` is (or can be made) a writable directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileWriteError(f"{path}: {what} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileWriteError(describe_os_error(e, path)) from None
    if not os.access(path, os.W_OK):
        raise FileWriteError(f"{path}: {what} is not writable")
    return path


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Refuses FIFOs, devices and sockets (opening a FIFO blocks forever) before anything opens `path`."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TinyGemmaError(f"{path}: no such {what}") from None
    except OSError as e:
        raise TinyGemmaError(describe_os_error(e, path)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, device or socket)"
        raise TinyGemmaError(f"{path}: {what} is {kind}")
    return path
