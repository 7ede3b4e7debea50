"""Atomic file writes: a temp file in the target's folder, then one rename.

An interrupted process leaves either the old file or none, never a truncated one. (No fsync:
thousands of small dataset files would pay for it, and power loss is not the case we guard.)
Temp names start with "." and end with ".tmp", so folder listings skip them, and carry the tag
".diff2in1-" (`.<name>.diff2in1-<random>.tmp`); `clean_stale_tmp` removes only names with that tag
(and temp folders holding our marker file), so a user's own `.notes.tmp` is never touched. Files
get the permissions the umask gives a new file (mkstemp alone, and safetensors, would make every
file private to its owner). A full disk or a read-only folder is an
InputError naming the file, and leaves no partial file.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import InputError

TMP_SUFFIX = ".tmp"
TMP_TAG = ".diff2in1-"  # in every temp name we make: what `clean_stale_tmp` may remove
TMP_MARKER = ".diff2in1-partial"  # inside every temp folder we make (see runs.atomic_dir)
STALE_SECONDS = 60.0  # a temp file older than this belongs to no live writer of ours
# `.<name>.diff2in1-<mkstemp's 8 characters>.tmp`, and the temp / set-aside folders of atomic_dir.
_OUR_TMP_FILE = re.compile(r"^\..+\.diff2in1-[A-Za-z0-9_]{8}\.tmp$")
_OUR_TMP_DIR = re.compile(r"^\..+\.diff2in1-(tmp|old)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(path: str | os.PathLike) -> None:
    """Give `path` (a folder: everything under it too) the permissions the umask gives new files
    and folders; for writers that make files private (safetensors, mkstemp)."""
    mask = _umask()
    path = Path(path)
    todo = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for p in todo:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


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
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_TAG}", suffix=TMP_SUFFIX)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # after the write: a writer may have replaced the file
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


def is_our_temp(p: Path) -> bool:
    """Whether `p` is a temp file or folder this program made (tagged name; a folder also holds
    our marker file). Anything else, whatever its name, is the user's."""
    if _OUR_TMP_FILE.match(p.name):
        return not p.is_dir() or p.is_symlink()
    if _OUR_TMP_DIR.match(p.name):
        return p.is_dir() and not p.is_symlink() and (p / TMP_MARKER).is_file()
    return False


def clean_stale_tmp(folder: str | os.PathLike, recursive: bool = True) -> int:
    """Remove what a killed process of ours left under `folder`: temp files and folders with our
    tag (see `is_our_temp`) older than a minute. Nothing else is touched. Returns how many."""
    import shutil

    root = Path(folder)
    if not root.is_dir():
        return 0
    now, removed = time.time(), 0
    entries = root.rglob(".*") if recursive else root.glob(".*")
    for p in list(entries):
        try:
            if not is_our_temp(p) or now - p.lstat().st_mtime < STALE_SECONDS:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
            removed += 1
        except OSError:
            continue
    return removed
