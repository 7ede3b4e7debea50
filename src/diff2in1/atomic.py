"""Atomic file writes: a temp file in the target's folder, then one rename.

An interrupted process leaves either the old file or none, never a truncated one. (No fsync:
thousands of small dataset files would pay for it, and power loss is not the case we guard.)
Temp names start with "." and end with ".tmp", so folder listings skip them; `clean_stale_tmp`
removes those a killed process left behind. Files get the permissions the umask gives a new file
(mkstemp alone would make every file private to its owner). A full disk or a read-only folder is an
InputError naming the file, and leaves no partial file.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import InputError

TMP_SUFFIX = ".tmp"
STALE_SECONDS = 60.0  # a temp file older than this belongs to no live writer of ours


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def disk_error(path: str | os.PathLike, e: OSError) -> InputError:
    """One line for a failed write: what happened to which file, and what to do."""
    if e.errno == errno.ENOSPC:
        why = "no space left on the device; free some space and run again (with --resume where offered)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "not writable (permission denied or read-only); choose another --out"
    elif e.errno == errno.ENOTDIR:
        why = "a parent of this path is a file, not a folder; choose another --out"
    elif e.errno == errno.EDQUOT:
        why = "disk quota exceeded; free some space and run again"
    else:
        why = e.strerror or type(e).__name__
    return InputError(f"{path}: cannot write ({why})")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; if the block succeeds it replaces `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise disk_error(path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` atomically: `write(fileobj)` fills the temp file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def save_text(path: str | os.PathLike, text: str) -> None:
    """Save UTF-8 text atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def clean_stale_tmp(folder: str | os.PathLike, recursive: bool = True) -> int:
    """Remove `.*.tmp` files (and `.*.tmp` / `.*.old` folders) older than a minute under `folder`:
    what a killed process left. Returns how many were removed."""
    import shutil

    root = Path(folder)
    if not root.is_dir():
        return 0
    now, removed = time.time(), 0
    entries = root.rglob(".*") if recursive else root.glob(".*")
    for p in list(entries):
        if not (p.name.endswith(TMP_SUFFIX) or p.name.endswith(".old")):
            continue
        try:
            if now - p.lstat().st_mtime < STALE_SECONDS:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
            removed += 1
        except OSError:
            continue
    return removed
