"""Atomic file writes: a temp file in the target's folder, then one rename.

An interrupted process leaves either the old file or none, never a truncated one. (No fsync:
thousands of small dataset files would pay for it, and power loss is not the case we guard.)
Temp names start with "." and end with ".tmp", so folder listings skip them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; if the block succeeds it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` atomically: `write(fileobj)` fills the temp file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def save_text(path: str | os.PathLike, text: str) -> None:
    """Save UTF-8 text atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
