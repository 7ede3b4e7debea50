"""A torch Dataset with every task's labels: surface normals, depth, semantic classes
(docs/multitask.md).

Two layouts are read directly:
- "nyu", the package's own (docs/method.md section 5): `<root>/<split>/{img,norm,norm_npy,
  depth,seg,caption}/<id>.*` and `<root>/classes.json` (see `data.layout`, `data.labels`);
- "nyudmt", the NYUD-MT folder of the multi-task literature (ASTMT, MTI-Net, InvPT):
  `<root>/images/<id>.jpg`, `depth/<id>.npy` (float metres, 0 = none), `segmentation/<id>.png`
  (8-bit, 0 = unlabelled, 1..40 = the NYU 40 classes; read as 0..39 with 255 = ignore),
  `normals/<id>.npy` (float HxWx3 unit vectors, (0, 0, 0) = none; used in the file's own axis
  convention), `edge/` (not read) and the split lists `gt_sets/<split>.txt` (one id a line).

A sample may lack any task's label: its `has_<task>` flag is then False and its label is empty
(mask False, depth 0, classes 255), so that task's loss is masked for it. `label_counts` says how
many samples carry each label.

Resizing per modality (only where `size` differs from a file's size): the image and normals as
`NormalsDataset` does (`resize`: "research" or "nearest"); depth nearest by default
(`depth_resize="valid-bilinear"`: bilinear where every blended pixel has depth); class maps
always nearest.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from diff2in1.data.dataset import (
    OnError,
    ResizeMode,
    _as_size,
    check_reading_options,
    resize_image,
    resize_nearest,
    resize_normals_research,
)
from diff2in1.data.labels import (
    CLASSES_FILE,
    DEPTH_DIR,
    DEPTH_RESIZE_MODES,
    IGNORE_INDEX,
    SEG_DIR,
    ClassList,
    DepthResize,
    check_class_ids,
    nyu40_classes,
    read_class_list,
    read_depth,
    read_nyudmt_seg,
    read_seg_pixels,
    resize_classes,
    resize_depth,
)
from diff2in1.data.layout import (
    IMAGE_EXTS,
    check_label_size,
    check_normal_array,
    decode_normal_png,
    label_paths,
    list_ids,
    read_caption,
    sample_paths,
    split_dir,
    valid_mask_of,
)
from diff2in1.errors import InputError
from diff2in1.imaging.files import load_npy, load_png_rgb_strict, load_rgb, png_header

TASKS = ("normals", "depth", "segmentation")
Layout = Literal["auto", "nyu", "nyudmt"]


def detect_layout(root: str | os.PathLike) -> str:
    """"nyudmt" when `<root>/gt_sets` and `<root>/images` exist, else "nyu"."""
    r = Path(root)
    return "nyudmt" if (r / "gt_sets").is_dir() and (r / "images").is_dir() else "nyu"


def parse_tasks(tasks: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """"normals,depth" or a sequence -> a tuple of known task names in TASKS order (no repeats)."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise InputError(f"--tasks: unknown task {unknown[0]!r}" if unknown else "--tasks: no task given")
    return tuple(t for t in TASKS if t in names)


@dataclass(frozen=True)
class _Files:
    """The label files of one sample that exist (None = that task has no label for it)."""

    id: str
    image: Path
    size: tuple[int, int]  # (H, W) of the image
    normal: Path | None = None  # .npy (float) or .png (8-bit encoding)
    depth: Path | None = None
    seg: Path | None = None
    caption: Path | None = None


@dataclass
class LabelCounts:
    samples: int = 0
    per_task: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = ", ".join(f"{t} {n}" for t, n in self.per_task.items())
        return f"{self.samples} samples; with labels: {parts}"


class MultiTaskDataset(Dataset):
    """Image / caption samples with normals, depth and class-map labels, any of which may be absent.

    Args:
        root: dataset root. split: "train", "test" (nyu) or a `gt_sets/<split>.txt` name (nyudmt).
        tasks: the tasks whose labels are read (others are not even looked for).
        size: output (H, W), an int for square, or None to keep each file's size.
        layout: "auto" (`detect_layout`), "nyu" or "nyudmt".
        resize: "research" or "nearest", for the image and normals exactly as `NormalsDataset`.
        depth_resize: "nearest" (default) or "valid-bilinear".
        classes: the class list (default: `<root>/classes.json`; the NYU 40 classes for nyudmt).
        on_error: "raise" -> the first bad sample is a one-line InputError naming its file;
            "skip" -> bad samples are left out and listed in `self.skipped` as (id, reason).
        captions: read captions (nyu layout only; NYUD-MT has none).

    Every label file is decoded once at construction (wrong bit depth, class ids beyond the class
    list, a label map of another size than its image fail there, before any model loads).

    Items: image float32 (3,H,W) in [-1,1], caption, id, index, and per task read:
    normals: normal (3,H,W), mask bool (1,H,W), has_normals; depth: depth float32 (1,H,W) metres
    (0 = none), has_depth; segmentation: classes int64 (H,W) (255 = ignore), has_segmentation.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        tasks: str | tuple[str, ...] = TASKS,
        size: int | tuple[int, int] | None = (512, 512),
        layout: Layout = "auto",
        resize: ResizeMode = "research",
        depth_resize: DepthResize = "nearest",
        classes: ClassList | None = None,
        on_error: OnError = "raise",
        captions: bool = True,
    ) -> None:
        check_reading_options(on_error, resize)
        if depth_resize not in DEPTH_RESIZE_MODES:
            modes = ", ".join(DEPTH_RESIZE_MODES)
            raise InputError(f"depth resize must be one of {modes}, got {depth_resize!r}")
        self.root, self.split = Path(root), split
        self.tasks = parse_tasks(tasks)
        self.size = _as_size(size)
        self.layout = detect_layout(root) if layout == "auto" else layout
        if self.layout not in ("nyu", "nyudmt"):
            raise InputError(f"layout must be auto, nyu or nyudmt, got {layout!r}")
        self.resize, self.depth_resize = resize, depth_resize
        self.captions = captions and self.layout == "nyu"
        self.classes = classes if classes is not None else self._default_classes()
        self.skipped: list[tuple[str, str]] = []

        ids = self._list_ids()
        if not ids:
            raise InputError(f"no images in {self._image_dir()}")
        entries = []
        for sid in ids:
            try:
                entries.append(self._check(sid))
            except InputError as e:
                if on_error == "raise":
                    raise
                self.skipped.append((sid, str(e)))
        for path in self._orphans(ids):
            reason = f"{path}: label file without an image"
            if on_error == "raise":
                raise InputError(reason + " (remove it, add the image, or use --skip-bad-samples)")
            self.skipped.append((path.stem, reason))
        self.entries = entries
        if self.skipped:
            warnings.warn(
                f"skipped {len(self.skipped)} of {len(ids)} samples in {self._where()} "
                f"(first: {self.skipped[0][1]})",
                stacklevel=2,
            )
        if not entries:
            raise InputError(f"no usable samples in {self._where()} ({len(self.skipped)} skipped)")
        if "segmentation" in self.tasks and self.classes is None and any(e.seg for e in entries):
            where = self.root / CLASSES_FILE
            raise InputError(f"{where}: class list missing (the seg/ class maps need one)")
        keys = {"normals": "normal", "depth": "depth", "segmentation": "seg"}
        self.label_counts = LabelCounts(
            len(entries), {t: sum(getattr(e, keys[t]) is not None for e in entries) for t in self.tasks}
        )

    # ------------------------------------------------------------------ layout

    def _default_classes(self) -> ClassList | None:
        path = self.root / CLASSES_FILE
        if path.is_file():
            return read_class_list(path)
        return nyu40_classes() if self.layout == "nyudmt" else None

    def _image_dir(self) -> Path:
        return self.root / "images" if self.layout == "nyudmt" else split_dir(self.root, self.split) / "img"

    def _where(self) -> Path:
        if self.layout == "nyudmt":
            return self.root / "gt_sets" / f"{self.split}.txt"
        return split_dir(self.root, self.split)

    def _list_ids(self) -> list[str]:
        if self.layout == "nyu":
            return list_ids(self.root, self.split)
        path = self._where()
        if not path.is_file():
            have = sorted(p.stem for p in (self.root / "gt_sets").glob("*.txt"))
            raise InputError(f"{path}: split list not found (splits here: {', '.join(have) or 'none'})")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read split list ({type(e).__name__})") from None
        ids = [line.strip() for line in lines if line.strip()]
        bad = [i for i in ids if "/" in i or i.startswith(".")]
        if bad:
            raise InputError(f"{path}: invalid sample id {bad[0]!r}")
        return list(dict.fromkeys(ids))  # keep order, drop repeats

    def _orphans(self, ids: list[str]) -> list[Path]:
        """Depth / class-map files of the tasks read whose id has no image (nyu layout; NYUD-MT's
        folders are shared by all splits, so there an unlisted file is simply not in the split)."""
        if self.layout != "nyu":
            return []
        known, d = set(ids), split_dir(self.root, self.split)
        folders = {"depth": (DEPTH_DIR, (".npy", ".png")), "segmentation": (SEG_DIR, (".png",))}
        out = []
        for task, (sub, exts) in folders.items():
            if task in self.tasks and (d / sub).is_dir():
                files = [p for p in (d / sub).iterdir() if p.suffix in exts and not p.name.startswith(".")]
                out += sorted(p for p in files if p.stem not in known)
        return out

    def _paths(self, sid: str) -> _Files:
        """The files of `sid` that exist, for the tasks read (size filled in by `_check`)."""
        if self.layout == "nyu":
            p, lp = sample_paths(self.root, self.split, sid), label_paths(self.root, self.split, sid)
            normal = next((x for x in (p.normal_npy, p.normal_png) if x.is_file()), None)
            return _Files(
                sid, p.image, (0, 0), normal, lp.depth, lp.seg if lp.seg.is_file() else None,
                p.caption if p.caption.is_file() else None,
            )  # fmt: skip
        r = self.root

        def first(folder: str, exts: tuple[str, ...]) -> Path | None:
            return next((f for f in (r / folder / f"{sid}{x}" for x in exts) if f.is_file()), None)

        image = first("images", (".jpg", *IMAGE_EXTS)) or r / "images" / f"{sid}.jpg"
        return _Files(
            sid, image, (0, 0), first("normals", (".npy", ".png")), first("depth", (".npy", ".png")),
            first("segmentation", (".png",)),
        )  # fmt: skip

    # ------------------------------------------------------------------ checks and reading

    def _check(self, sid: str) -> _Files:
        f = self._paths(sid)
        w, h, _ = png_header(f.image, decode=True)
        size = (h, w)
        if self.captions and f.caption is not None:
            read_caption(f.caption)
        normal = depth = seg = None
        if "normals" in self.tasks and f.normal is not None:
            n, _ = self._read_normal(f.normal)
            check_label_size(f.normal, n.shape, size, f.image)
            normal = f.normal
        if "depth" in self.tasks and f.depth is not None:
            check_label_size(f.depth, read_depth(f.depth).shape, size, f.image)
            depth = f.depth
        if "segmentation" in self.tasks and f.seg is not None:
            check_label_size(f.seg, self._read_seg(f.seg).shape, size, f.image)
            seg = f.seg
        caption = f.caption if self.captions else None
        return _Files(sid, f.image, size, normal, depth, seg, caption)

    def _read_normal(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if path.suffix == ".npy":
            n = check_normal_array(load_npy(path), path)
            mask = valid_mask_of(n)
            return np.where(mask[..., None], n, 0.0).astype(np.float32), mask
        return decode_normal_png(load_png_rgb_strict(path))

    def _read_seg(self, path: Path) -> np.ndarray:
        if self.layout == "nyudmt":
            ids = read_nyudmt_seg(path)
            return check_class_ids(ids, len(self.classes) if self.classes else None, path)
        return check_class_ids(read_seg_pixels(path), len(self.classes) if self.classes else None, path)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def _resizing(self, e: _Files) -> bool:
        return self.size is not None and self.size != e.size

    def _load_image(self, e: _Files) -> torch.Tensor:
        """float32 (3, H, W) in [-1, 1], exactly as `NormalsDataset` loads it."""
        img = load_rgb(e.image)
        if self._resizing(e):
            if self.resize == "research":
                x = resize_image(torch.from_numpy(img).permute(2, 0, 1).double() / 255.0, self.size)
                return (x * 2.0 - 1.0).float()
            h, w = self.size
            img = np.array(Image.fromarray(img).resize((w, h), resample=Image.BILINEAR))
        return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0

    def _load_normal(self, e: _Files) -> tuple[np.ndarray, np.ndarray]:
        """As `NormalsDataset._load_labels`: the research recipe resizes the 8-bit PNG's pixel / 255."""
        if self._resizing(e) and self.resize == "research" and e.normal.suffix == ".png":
            pix = load_png_rgb_strict(e.normal)
            n01, mask = resize_normals_research(pix / 255.0, pix.any(axis=-1), self.size)
            return np.where(mask[..., None], n01 * 2.0 - 1.0, 0.0), mask
        normal, mask = self._read_normal(e.normal)
        if self._resizing(e) and self.resize == "research":
            return resize_normals_research(normal, mask, self.size)
        if self._resizing(e):
            return resize_nearest(normal, self.size), resize_nearest(mask, self.size)
        return normal, mask

    def __getitem__(self, index: int) -> dict:
        e = self.entries[index]
        image = self._load_image(e)
        h, w = image.shape[1:]
        item: dict = {"image": image, "id": e.id, "index": index}
        item["caption"] = (read_caption(e.caption) or "") if e.caption is not None else ""
        if "normals" in self.tasks:
            item["has_normals"] = e.normal is not None
            if e.normal is not None:
                normal, mask = self._load_normal(e)
                item["normal"] = torch.from_numpy(np.ascontiguousarray(normal)).permute(2, 0, 1).float()
                item["mask"] = torch.from_numpy(np.ascontiguousarray(mask))[None]
            else:
                item["normal"], item["mask"] = torch.zeros(3, h, w), torch.zeros(1, h, w, dtype=torch.bool)
        if "depth" in self.tasks:
            item["has_depth"] = e.depth is not None
            d = np.zeros((h, w), np.float32)
            if e.depth is not None:
                d = read_depth(e.depth)
                if self._resizing(e):
                    d = resize_depth(d, self.size, self.depth_resize)
            item["depth"] = torch.from_numpy(np.ascontiguousarray(d, np.float32))[None]
        if "segmentation" in self.tasks:
            item["has_segmentation"] = e.seg is not None
            c = np.full((h, w), IGNORE_INDEX, np.uint8)
            if e.seg is not None:
                c = self._read_seg(e.seg)
                if self._resizing(e):
                    c = resize_classes(c, self.size)
            item["classes"] = torch.from_numpy(np.ascontiguousarray(c).astype(np.int64))
        return item


__all__ = ["TASKS", "LabelCounts", "MultiTaskDataset", "detect_layout", "parse_tasks"]
