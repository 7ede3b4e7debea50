"""Output folders of the commands that write files of fixed names into `--out` (predict,
evaluate): an existing folder is taken only when it is empty or holds that command's own earlier
output, so no file of a user's is overwritten. The folder is marked with a small hidden file
naming the command; a folder written before the mark existed is recognised by its file names."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .atomic import is_our_temp, save_text
from .errors import InputError
from .regular_file import check_regular_file

MARK = ".diff2in1-output"


def _marked_by(out: Path, command: str) -> bool:
    mark = out / MARK
    if not os.path.lexists(mark):
        return False
    check_regular_file(mark)
    return mark.read_text(encoding="utf-8", errors="replace").strip() == command


def check_output_folder(out: str | os.PathLike, command: str, own: Callable[[str], bool]) -> None:
    """InputError (one line) if `out` is a file, or an existing folder holding anything that
    `command` does not write (`own(name)` says which names it writes). Writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if not out.is_dir() or _marked_by(out, command):
        return
    others = sorted(
        (p.name for p in out.iterdir() if p.name != MARK and not own(p.name) and not is_our_temp(p)),
        key=lambda n: (n.startswith("."), n),
    )
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise InputError(
            f"--out {out}: an existing folder with files {command} did not write ({shown}); "
            "choose a new or empty folder"
        )


def mark_output_folder(out: str | os.PathLike, command: str) -> None:
    """Make `out` (if needed) and mark it as `command`'s output folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(out / MARK):
        save_text(out / MARK, command + "\n")
