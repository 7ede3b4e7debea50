"""Only regular files (or links to them) are read as data: a FIFO, socket or device named like an
image, normal map, caption or config would block the reader or never end. Every loader calls
`check_regular_file` before opening a path."""

from __future__ import annotations

import os
import stat

from .errors import InputError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_regular_file(path: str | os.PathLike, name: str | None = None) -> os.stat_result:
    """The file's stat, or a one-line InputError naming `name` (default: the path) when `path` is
    missing, a broken link, a folder, or a special file. Never opens the path."""
    name = str(path) if name is None else name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        kind = "broken link" if os.path.islink(path) else "file not found"
        raise InputError(f"{name}: {kind}") from None
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror or type(e).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{name}: is a folder (directory), not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((what for test, what in _KINDS if test(st.st_mode)), "not a regular file")
        raise InputError(f"{name}: is {kind}, not a regular file; refused (it was not opened)")
    return st


def present(path: str | os.PathLike) -> bool:
    """Whether anything is at `path` (a special file or a broken link too): the test for "this
    sample has that file", so that a FIFO is named by its reader instead of passing for missing."""
    return os.path.lexists(path)
