"""The data of a multi-task reproduction (`reproduce --tasks`): which label folders a task needs,
the checks before any model loads, the evaluation split of a NYUD-MT folder, the captioned copy of
its training images that data creation reads, and the dry run's copy of a NYUD-MT folder.

A NYUD-MT folder (docs/multitask.md) is read directly by the warm-up, the self-improvement and the
evaluation. It has no captions, and data creation reads the package's own layout, so the
reproduction links its training images into `<out>/source/train/img/` and writes their captions
into `<out>/source/train/caption/` (the given folder is only read).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from ...data.layout import CAPTION_DIR, IMG_DIR, NORM_DIR, NORM_NPY_DIR
from ...data.multitask import MultiTaskDataset, detect_layout
from ...errors import InputError

# Label folders per task: of a NYUD-MT root, and of a split in the package's own layout.
NYUDMT_FOLDERS = {"normals": "normals", "depth": "depth", "segmentation": "segmentation"}
NYU_FOLDERS = {"normals": (NORM_DIR, NORM_NPY_DIR), "depth": ("depth",), "segmentation": ("seg",)}
SOURCE = "source"  # <out>/source: the captioned training images of a NYUD-MT folder


def is_nyudmt(data: str | Path) -> bool:
    return bool(data) and detect_layout(data) == "nyudmt"


def eval_split(data: str | Path, split: str) -> str:
    """The evaluation split: `split`, except that a NYUD-MT folder without `gt_sets/test.txt`
    evaluates on `val` (that layout's name for NYUv2's 654 test images)."""
    root = Path(data)
    if split == "test" and is_nyudmt(root) and not (root / "gt_sets" / "test.txt").is_file():
        return "val"
    return split


def check_label_folders(data: str | Path, tasks: tuple[str, ...], splits: tuple[str, ...]) -> None:
    """A one-line error naming the label folder of a requested task that does not exist."""
    root = Path(data)
    for task in tasks:
        if is_nyudmt(root):
            wanted = [root / NYUDMT_FOLDERS[task]]
        else:
            wanted = [root / split / NYU_FOLDERS[task][0] for split in dict.fromkeys(splits)]
        for folder in wanted:
            alternatives = [folder.parent / f for f in NYU_FOLDERS[task]] if not is_nyudmt(root) else [folder]
            if not any(f.is_dir() for f in alternatives):
                raise InputError(f"{folder}: no such folder (the {task} labels that --tasks {task} needs)")


def check_multitask_data(
    data: str, train_split: str, test_split: str, tasks: tuple[str, ...], size, resize: str, skip_bad: bool
) -> int:
    """Build the training and evaluation sets once (every label file decoded: bad files fail here,
    named, before any model loads); a task without any label in a set is an error. Returns the
    number of training samples."""
    on_error = "skip" if skip_bad else "raise"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*have no caption file")
        train = MultiTaskDataset(data, train_split, tasks, size=size, resize=resize, on_error=on_error)
        test = MultiTaskDataset(data, test_split, tasks, size=None, on_error=on_error, captions=False)
    sets = {train_split: train, test_split: test}
    for split, ds in sets.items():
        missing = [t for t in tasks if not ds.label_counts.per_task[t]]
        if missing:
            raise InputError(
                f"{data}: no {split} sample carries a {missing[0]} label (with labels: {ds.label_counts})"
            )
    return len(train)


def _link_or_copy(src: Path, dst: Path) -> None:
    from ...data.merge import _link_or_copy as place

    place(src, dst)


def nyudmt_ids(data: str | Path, split: str) -> list[str]:
    """The sample ids of a NYUD-MT folder's `gt_sets/<split>.txt`, in order, without repeats."""
    path = Path(data) / "gt_sets" / f"{split}.txt"
    if not path.is_file():
        raise InputError(f"{path}: split list not found")
    try:
        ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read split list ({type(e).__name__})") from None
    bad = [i for i in ids if "/" in i or i.startswith(".")]
    if bad:
        raise InputError(f"{path}: invalid sample id {bad[0]!r}")
    return list(dict.fromkeys(ids))


def _nyudmt_image(data: Path, sid: str) -> Path:
    found = [data / "images" / f"{sid}{x}" for x in (".jpg", ".png", ".jpeg")]
    image = next((f for f in found if f.is_file()), None)
    if image is None:
        raise InputError(f"{found[0]}: file not found")
    return image


def make_caption_source(data: str | Path, split: str, out: str | Path) -> Path:
    """`<out>/train/img/`: the images of a NYUD-MT folder's `split` list, hard-linked (or copied),
    so that captions can be written beside them and data creation can read them. Idempotent."""
    root = Path(out)
    for sid in nyudmt_ids(data, split):
        image = _nyudmt_image(Path(data), sid)
        _link_or_copy(image, root / "train" / IMG_DIR / f"{sid}{image.suffix.lower()}")
    (root / "train" / CAPTION_DIR).mkdir(parents=True, exist_ok=True)
    return root


def copy_nyudmt_samples(
    source: str | Path,
    root: str | Path,
    train: dict[str, int],
    n_test: int,
    tasks: tuple[str, ...],
    test_split: str = "test",
) -> None:
    """The dry run's NYUD-MT folder: the first samples of each split list of `source` (`train`:
    split -> count; the evaluation split `test_split`: `n_test`), with the label files of `tasks`."""
    src, dst = Path(source), Path(root)
    test = eval_split(src, test_split)
    for split, n in {**train, test: n_test}.items():
        path = src / "gt_sets" / f"{split}.txt"
        ids = nyudmt_ids(src, split)
        if len(ids) < n:
            raise InputError(f"reproduce --dry-run: {path} lists {len(ids)} image(s), needs {n}")
        for sid in ids[:n]:
            for task in tasks:
                for ext in (".npy", ".png"):
                    name = f"{NYUDMT_FOLDERS[task]}/{sid}{ext}"
                    _copy(src / name, dst / name)
            image = _nyudmt_image(src, sid)
            _copy(image, dst / "images" / image.name)
        target = dst / "gt_sets" / f"{split}.txt"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(ids[:n]) + "\n")
    if (src / "classes.json").is_file():
        _copy(src / "classes.json", dst / "classes.json")


def _copy(a: Path, b: Path) -> None:
    if a.is_file() and not b.exists():
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a, b)
