"""`diff2in1 merge`: one folder in the data layout of docs/method.md section 5 from an original
dataset and synthetic ones.

Training never needs this (the self-improving stage reads the folders as they are); it is for
people who want a single folder, as the research code's hand-merged `nyu_nyu_T600`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..atomic import disk_error
from ..errors import InputError
from ..path_overlap import refuse_overlap
from .labels import CLASSES_FILE
from .layout import list_ids


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(dst, e) from None


def merge_datasets(original: str | Path, synthetic: list[str | Path], out: str | Path) -> int:
    """Hard-link (or copy) every split of `original` (and its class list) and the train split of
    each synthetic set into `out`. Ids must not collide; returns the number of files placed."""
    original, out = Path(original), Path(out)
    refuse_overlap(out, data=original, synthetic=[str(p) for p in synthetic])
    splits = [d.name for d in original.iterdir() if (d / "img").is_dir()] if original.is_dir() else []
    if not splits:
        raise InputError(f"{original}: no split folders with img/ inside")
    sources = [(original / s, s) for s in splits] + [(Path(p) / "train", "train") for p in synthetic]
    # Every check before the first link: a refused merge leaves no partial folder behind.
    seen: dict[tuple[str, str], Path] = {}
    plan: list[tuple[Path, Path]] = []
    for split_root, split in sources:
        ids = list_ids(split_root.parent, split_root.name)
        if not ids:
            raise InputError(f"{split_root}: no images")
        for i in ids:
            if (split, i) in seen:
                raise InputError(f"{split_root}: sample id {i!r} also in {seen[(split, i)]}; cannot merge")
            seen[(split, i)] = split_root
        for sub in sorted(d for d in split_root.iterdir() if d.is_dir()):
            for f in sorted(sub.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    plan.append((f, out / split / sub.name / f.name))
    if (original / CLASSES_FILE).is_file():  # the class list of the seg/ class maps
        plan.append((original / CLASSES_FILE, out / CLASSES_FILE))
    for src, dst in plan:
        _link_or_copy(src, dst)
    return len(plan)
