"""Depth and class-map label files, class lists, and their per-modality resizing (docs/multitask.md).

```
<root>/<split>/depth/<id>.png   16-bit grey PNG, depth in millimetres; 0 = no depth
<root>/<split>/depth/<id>.npy   float HxW, depth in metres; 0, negative or non-finite = no depth
<root>/<split>/seg/<id>.png     8-bit grey (or palette) PNG of class ids; 255 = ignore
<root>/classes.json             the class list: names and colours, ids in list order
```

Where a depth map exists as both files, the lossless `.npy` is read. Every reader checks the file
and fails with one line naming it (`InputError`); every writer writes atomically.

Resizing follows the multi-task literature's recipe: class maps always nearest (a blend of two
class ids is no class); depth nearest by default (as the NYUD-MT training transforms of InvPT and
TaskPrompter), or "valid-bilinear": bilinear where every blended source pixel has depth, invalid
elsewhere (the rule the research recipe applies to normal maps).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from diff2in1.atomic import atomic_write
from diff2in1.errors import InputError
from diff2in1.imaging.files import image_errors, load_npy, save_npy, save_text
from diff2in1.imaging.resize import resize_bilinear, resize_nearest
from diff2in1.regular_file import check_regular_file

DEPTH_DIR = "depth"
SEG_DIR = "seg"
CLASSES_FILE = "classes.json"
IGNORE_INDEX = 255
DEPTH_PNG_SCALE = 1000.0  # PNG units per metre (millimetres)
MAX_CLASSES = 255  # ids 0..254; 255 is the ignore index

DepthResize = Literal["nearest", "valid-bilinear"]
DEPTH_RESIZE_MODES = ("nearest", "valid-bilinear")


# ---------------------------------------------------------------------------- class lists


@dataclass(frozen=True)
class ClassList:
    """Names and display colours (RGB 0..255) of a segmentation's classes; id = list position."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise InputError("class list: no classes")
        if len(self.names) > MAX_CLASSES:
            raise InputError(f"class list: {len(self.names)} classes, at most {MAX_CLASSES} (255 = ignore)")
        if len(self.colors) != len(self.names):
            raise InputError(f"class list: {len(self.names)} names but {len(self.colors)} colours")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def with_default_colors(cls, names: list[str] | tuple[str, ...]) -> ClassList:
        return cls(tuple(names), tuple(default_colors(len(names))))

    def to_json(self) -> str:
        rows = [{"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(self.zip())]
        return json.dumps({"ignore_index": IGNORE_INDEX, "classes": rows}, indent=1) + "\n"

    def zip(self) -> list[tuple[str, tuple[int, int, int]]]:
        return list(zip(self.names, self.colors, strict=True))

    def palette(self) -> np.ndarray:
        """uint8 (256, 3) lookup table: class id -> colour; ids without a class (255) black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: len(self)] = np.asarray(self.colors, np.uint8)
        return lut


def default_colors(n: int) -> list[tuple[int, int, int]]:
    """n distinct, stable colours: hues spaced by the golden angle, alternating lightness."""
    out = []
    for i in range(n):
        h = (i * 0.381966) % 1.0
        v = 0.95 if i % 2 == 0 else 0.7
        s = 0.75 if i % 3 else 0.55
        k = np.array([5.0, 3.0, 1.0])
        rgb = v - v * s * np.clip(np.minimum((k + h * 6) % 6, 4 - (k + h * 6) % 6), 0, 1)
        out.append(tuple(int(round(c * 255)) for c in rgb))
    return out


def write_class_list(path: str | os.PathLike, classes: ClassList) -> None:
    save_text(path, classes.to_json())


def read_class_list(path: str | os.PathLike) -> ClassList:
    """Read a `classes.json` (as `ClassList.to_json` writes); one-line InputError naming the file."""
    check_regular_file(path)  # a FIFO or device is named, never opened
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = doc["classes"]
        names = [str(r["name"]) for r in rows]
        colors = [tuple(int(c) for c in r["color"]) for r in rows]
        ids = [int(r.get("id", i)) for i, r in enumerate(rows)]
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a class list ({type(e).__name__}: {e})") from None
    if ids != list(range(len(ids))):
        raise InputError(f"{path}: class ids must be 0, 1, 2, ... in order")
    if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
        raise InputError(f"{path}: every colour must be three values 0..255")
    try:
        return ClassList(tuple(names), tuple(colors))  # type: ignore[arg-type]
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


# NYUv2's 40-class set (Gupta et al., CVPR 2013), in the order of its ids 1..40. The NYUD-MT files
# store these as 1..40 with 0 = unlabelled; read as 0..39 with 255 = ignore (see `read_nyudmt_seg`).
NYU40_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip


def nyu40_classes() -> ClassList:
    return ClassList.with_default_colors(NYU40_NAMES)


# ---------------------------------------------------------------------------- depth files


def encode_depth_png(depth_m: np.ndarray, name: str = "depth") -> np.ndarray:
    """Depth in metres (HxW; invalid = 0 / negative / non-finite) -> uint16 millimetres, 0 = invalid."""
    d = np.asarray(depth_m, np.float64)
    if d.ndim != 2:
        raise InputError(f"{name}: expected an HxW depth map, got shape {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    mm = np.where(valid, np.rint(np.where(valid, d, 0.0) * DEPTH_PNG_SCALE), 0.0)
    if mm.max(initial=0.0) > 65535:
        raise InputError(f"{name}: depth {d[valid].max():.3f} m does not fit a 16-bit PNG in millimetres")
    mm[valid & (mm == 0)] = 1  # a valid depth below 0.5 mm must not read back as "no depth"
    return mm.astype(np.uint16)


def write_depth(path: str | os.PathLike, depth_m: np.ndarray) -> None:
    """Write depth (metres, HxW) as `.npy` (float32, lossless; invalid -> 0) or `.png` (16-bit mm)."""
    path = Path(path)
    d = np.asarray(depth_m, np.float32)
    if path.suffix == ".npy":
        if d.ndim != 2:
            raise InputError(f"{path}: expected an HxW depth map, got shape {d.shape}")
        save_npy(path, np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32))
        return
    pix = encode_depth_png(d, str(path))
    img = Image.fromarray(pix)  # uint16 -> mode I;16
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def read_depth(path: str | os.PathLike) -> np.ndarray:
    """Depth in metres, float32 HxW, 0 where there is none. `.npy`: float metres; `.png`: 16-bit mm."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        d = load_npy(path)
        if d.ndim == 3 and d.shape[-1] == 1:
            d = d[..., 0]
        if d.ndim != 2 or not np.issubdtype(d.dtype, np.floating):
            raise InputError(f"{path}: expected float HxW depth in metres, got {d.dtype} {d.shape}")
        d = d.astype(np.float32)
        return np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
    check_regular_file(path)  # a FIFO or device is named, never opened
    with image_errors(path, "cannot decode depth PNG"), Image.open(path) as img:
        mode = img.mode
        if not (mode.startswith("I;16") or mode == "I"):
            raise InputError(
                f"{path}: expected a 16-bit single-channel PNG (depth in millimetres), got mode {mode}"
            )
        img.load()
        pix = np.asarray(img).astype(np.int64)
    if pix.size and (pix.min() < 0 or pix.max() > 65535):
        raise InputError(f"{path}: values outside 0..65535 for a 16-bit depth PNG")
    return (pix / DEPTH_PNG_SCALE).astype(np.float32)


def depth_header(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of a depth file from its header, checking its kind (16-bit PNG or float .npy)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        from diff2in1.imaging.files import npy_header

        shape, dtype = npy_header(path)
        if len(shape) == 3 and shape[-1] == 1:
            shape = shape[:2]
        if len(shape) != 2 or not np.issubdtype(dtype, np.floating):
            raise InputError(f"{path}: expected float HxW depth in metres, got {dtype} {shape}")
        return int(shape[0]), int(shape[1])
    check_regular_file(path)  # a FIFO or device is named, never opened
    with image_errors(path, "cannot decode depth PNG"), Image.open(path) as img:
        if not (img.mode.startswith("I;16") or img.mode == "I"):
            raise InputError(
                f"{path}: expected a 16-bit single-channel PNG (depth in millimetres), got mode {img.mode}"
            )
        return img.size[1], img.size[0]


# ---------------------------------------------------------------------------- class maps


def write_seg(path: str | os.PathLike, classes: np.ndarray) -> None:
    """Write a class map (integer HxW, ids 0..254, 255 = ignore) as an 8-bit grey PNG."""
    c = np.asarray(classes)
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.integer):
        raise InputError(f"{path}: expected an integer HxW class map, got {c.dtype} {c.shape}")
    if c.size and (c.min() < 0 or c.max() > IGNORE_INDEX):
        raise InputError(f"{path}: class ids must lie in 0..255, got {c.min()}..{c.max()}")
    img = Image.fromarray(c.astype(np.uint8), mode="L")
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def read_seg_pixels(path: str | os.PathLike) -> np.ndarray:
    """The raw uint8 HxW ids of an 8-bit grey or palette PNG (palette indices are the ids)."""
    check_regular_file(path)  # a FIFO or device is named, never opened
    with image_errors(path, "cannot decode class map"), Image.open(path) as img:
        if img.mode not in ("L", "P"):
            raise InputError(
                f"{path}: expected an 8-bit single-channel PNG of class ids, got mode {img.mode}"
            )
        img.load()
        return np.array(img, dtype=np.uint8)


def check_class_ids(ids: np.ndarray, num_classes: int | None, path: str | os.PathLike) -> np.ndarray:
    """ids unchanged when every id is < num_classes or IGNORE_INDEX; else a one-line InputError."""
    if num_classes is not None:
        bad = (ids >= num_classes) & (ids != IGNORE_INDEX)
        if bad.any():
            raise InputError(
                f"{path}: class id {int(ids[bad].max())} beyond the class list "
                f"({num_classes} classes, ids 0..{num_classes - 1}, {IGNORE_INDEX} = ignore)"
            )
    return ids


def read_seg(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """Class ids, uint8 HxW (255 = ignore), checked against `num_classes` when given."""
    return check_class_ids(read_seg_pixels(path), num_classes, path)


def read_nyudmt_seg(path: str | os.PathLike) -> np.ndarray:
    """An NYUD-MT `segmentation/<id>.png` (0 = unlabelled, 1..40 = classes) -> 0..39, 255 = ignore."""
    raw = read_seg_pixels(path)
    check_class_ids(raw, len(NYU40_NAMES) + 1, path)
    return np.where(raw == 0, IGNORE_INDEX, raw.astype(np.int16) - 1).astype(np.uint8)


def seg_header(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of a class-map PNG from its header, checking its mode."""
    check_regular_file(path)  # a FIFO or device is named, never opened
    with image_errors(path, "cannot decode class map"), Image.open(path) as img:
        if img.mode not in ("L", "P"):
            raise InputError(
                f"{path}: expected an 8-bit single-channel PNG of class ids, got mode {img.mode}"
            )
        return img.size[1], img.size[0]


# ---------------------------------------------------------------------------- resizing


def resize_classes(classes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class map to size=(H, W) (ignore pixels stay ignore)."""
    return resize_nearest(np.asarray(classes), size)


def resize_depth(depth: np.ndarray, size: tuple[int, int], mode: DepthResize = "nearest") -> np.ndarray:
    """Resize depth (metres, 0 = none) to size=(H, W).

    "nearest": every output pixel is a measured source depth (or none).
    "valid-bilinear": bilinear (the package's OpenCV-style resize) where every blended source pixel
    has depth; 0 (none) wherever an invalid pixel would be blended in.
    """
    d = np.asarray(depth, np.float32)
    if d.shape[:2] == tuple(size):
        return d
    if mode == "nearest":
        return resize_nearest(d, size)
    if mode != "valid-bilinear":
        raise InputError(f"depth resize must be one of {', '.join(DEPTH_RESIZE_MODES)}, got {mode!r}")
    valid = d > 0
    keep = resize_bilinear(1.0 - valid.astype(np.float64), size) == 0.0
    out = resize_bilinear(np.where(valid, d, 0.0), size)
    return np.where(keep, out, 0.0).astype(np.float32)


__all__ = [
    "CLASSES_FILE",
    "DEPTH_DIR",
    "DEPTH_PNG_SCALE",
    "DEPTH_RESIZE_MODES",
    "IGNORE_INDEX",
    "NYU40_NAMES",
    "SEG_DIR",
    "ClassList",
    "check_class_ids",
    "default_colors",
    "depth_header",
    "encode_depth_png",
    "nyu40_classes",
    "read_class_list",
    "read_depth",
    "read_nyudmt_seg",
    "read_seg",
    "resize_classes",
    "resize_depth",
    "seg_header",
    "write_class_list",
    "write_depth",
    "write_seg",
]
