"""Output folders of the commands that write files of fixed names into `--out` (predict,
evaluate) and of those that write a whole tree there (demo, reproduce, make-scenes): an existing
folder is taken only when it is empty or holds that command's own earlier output, so no file of a
user's is overwritten. The folder is marked with a small hidden file naming the command; a folder
written before the mark existed is recognised by its file names (and, for a tree, by the file the
command writes first)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
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


def check_output_folder(
    out: str | os.PathLike,
    command: str,
    own: Callable[[str], bool],
    signed: Callable[[Path], bool] | None = None,
) -> None:
    """InputError (one line) if `out` is a file, or an existing folder holding anything that
    `command` does not write (`own(name)` says which names it writes), or, with `signed`, an
    unmarked non-empty folder for which `signed(out)` is false. Writes nothing."""
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
    held = any(p.name != MARK and not is_our_temp(p) for p in out.iterdir())
    if signed is not None and held and not signed(out):
        raise InputError(
            f"--out {out}: an existing folder that is not an earlier {command} output; "
            "choose a new or empty folder"
        )


def mark_output_folder(out: str | os.PathLike, command: str) -> None:
    """Make `out` (if needed) and mark it as `command`'s output folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(out / MARK):
        save_text(out / MARK, command + "\n")


@dataclass(frozen=True)
class TreeFolder:
    """What a command that writes a whole tree puts at the top of its --out: `names` (patterns)
    and `signed(out)`, whether an unmarked folder holds the file that command writes first."""

    names: tuple[str, ...]
    signed: Callable[[Path], bool]

    def own(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names)


def _scene_classes(out: Path) -> bool:
    from .data.labels import CLASSES_FILE, read_class_list
    from .data.scenes import SCENE_CLASS_NAMES

    path = out / CLASSES_FILE
    try:
        return path.is_file() and list(read_class_list(path).names) == list(SCENE_CLASS_NAMES)
    except InputError:
        return False


TREE_FOLDERS = {
    "demo": TreeFolder(
        ("demo_config.json", "stage_times.json", "metrics.json", "report.md", "fig_*.png", "data", "seed_*"),
        lambda out: (out / "demo_config.json").is_file(),
    ),
    "reproduce": TreeFolder(
        ("reproduce.yaml", "warmup", "synthetic", "self_improve", "eval_*", "metrics.json", "report.md",
         "dry_run"),  # fmt: skip
        lambda out: (out / "reproduce.yaml").is_file() or (out / "dry_run" / "reproduce.yaml").is_file(),
    ),
    "make-scenes": TreeFolder(("classes.json", "train", "test"), _scene_classes),
}


def claim_output_folder(out: str | os.PathLike, command: str, check_only: bool = False) -> None:
    """For a command of TREE_FOLDERS (demo, reproduce, make-scenes), before it writes: InputError
    (one line naming the folder) for an existing folder that is neither empty nor that command's
    earlier output; else make the folder and mark it as the command's (not with `check_only`: a
    command that checks its inputs first claims the folder once they pass, writing nothing before)."""
    kind = TREE_FOLDERS[command]
    check_output_folder(out, command, kind.own, kind.signed)
    if not check_only:
        mark_output_folder(out, command)
