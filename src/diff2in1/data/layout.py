"""One sample in the dataset layout of docs/method.md section 5.

```
<root>/<split>/img/<id>.png        8-bit RGB image
<root>/<split>/norm/<id>.png       8-bit RGB normal map: n = pixel / 255 * 2 - 1; pixel (0, 0, 0) = invalid
<root>/<split>/caption/<id>.txt    one line of text
<root>/<split>/norm_npy/<id>.npy   optional, float32 HxWx3 (same axis order as the PNG), invalid = (0, 0, 0)
<root>/<split>/kappa/<id>.npy      optional, float32 HxW confidence (synthetic data)
<root>/<split>/depth/<id>.png      optional, 16-bit depth in millimetres (0 = none), or
<root>/<split>/depth/<id>.npy      optional, float depth in metres (0 = none; read before the PNG)
<root>/<split>/seg/<id>.png        optional, 8-bit class ids of <root>/classes.json (255 = ignore)
```

Files pair by identical stem `<id>`. The float normals are the lossless copy of the PNG; where both
exist they describe the same map (the PNG is its 8-bit quantisation). Every file is written
atomically (temp file in the same directory, then `os.replace`).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diff2in1.errors import InputError
from diff2in1.imaging.files import (
    TMP_SUFFIX,
    image_to_uint8,
    load_npy,
    load_png_rgb_strict,
    load_rgb,
    save_npy,
    save_png,
    save_text,
    to_hwc,
)

IMG_DIR = "img"
NORM_DIR = "norm"
CAPTION_DIR = "caption"
NORM_NPY_DIR = "norm_npy"
KAPPA_DIR = "kappa"
# Image files may also be JPEG (user data); the order breaks ties between same-stem files.
IMAGE_EXTS = (".png", ".jpg", ".jpeg")

FloatNormals = Literal["auto"] | bool


@dataclass(frozen=True)
class SamplePaths:
    """Where the files of one sample live (whether or not they exist)."""

    image: Path
    normal_png: Path
    normal_npy: Path
    caption: Path
    kappa: Path


@dataclass
class Sample:
    """One decoded sample. `normal`/`mask` are None when the sample has no normal map."""

    id: str
    image: np.ndarray  # uint8 HxWx3
    caption: str
    normal: np.ndarray | None = None  # float32 HxWx3, zeros where invalid
    mask: np.ndarray | None = None  # bool HxW
    kappa: np.ndarray | None = None  # float32 HxW
    depth: np.ndarray | None = None  # float32 HxW metres, 0 = none
    classes: np.ndarray | None = None  # uint8 HxW class ids, 255 = ignore


def split_dir(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / split


def find_image(root: str | os.PathLike, split: str, sample_id: str) -> Path:
    """The image file of `sample_id`: the first extension of IMAGE_EXTS, in any letter case
    (`a.JPG` too), that exists; `<id>.png` if none does."""
    base = split_dir(root, split) / IMG_DIR
    for ext in IMAGE_EXTS:
        p = base / f"{sample_id}{ext}"
        if p.is_file():
            return p
    if base.is_dir():
        found = sorted(
            (IMAGE_EXTS.index(p.suffix.lower()), p.name, p)
            for p in base.glob(f"{glob.escape(sample_id)}.*")
            if p.stem == sample_id and p.suffix.lower() in IMAGE_EXTS and (p.exists() or p.is_symlink())
        )
        if found:
            return found[0][2]  # may be a folder or a broken link: reading it says so
    return base / f"{sample_id}.png"


def sample_paths(root: str | os.PathLike, split: str, sample_id: str) -> SamplePaths:
    d = split_dir(root, split)
    return SamplePaths(
        image=find_image(root, split, sample_id),
        normal_png=d / NORM_DIR / f"{sample_id}.png",
        normal_npy=d / NORM_NPY_DIR / f"{sample_id}.npy",
        caption=d / CAPTION_DIR / f"{sample_id}.txt",
        kappa=d / KAPPA_DIR / f"{sample_id}.npy",
    )


@dataclass(frozen=True)
class LabelPaths:
    """Where the depth and class-map files of one sample live (whether or not they exist)."""

    depth_png: Path
    depth_npy: Path
    seg: Path

    @property
    def depth(self) -> Path | None:
        """The depth file to read: the lossless .npy where it exists, else the PNG; None if neither."""
        if self.depth_npy.is_file():
            return self.depth_npy
        return self.depth_png if self.depth_png.is_file() else None


def label_paths(root: str | os.PathLike, split: str, sample_id: str) -> LabelPaths:
    from diff2in1.data.labels import DEPTH_DIR, SEG_DIR

    d = split_dir(root, split)
    depth_dir = d / DEPTH_DIR
    return LabelPaths(
        depth_dir / f"{sample_id}.png", depth_dir / f"{sample_id}.npy", d / SEG_DIR / f"{sample_id}.png"
    )


def list_ids(root: str | os.PathLike, split: str) -> list[str]:
    """Sorted stems of the image files of a split ([] when the folder is missing).

    Hidden files (our atomic-write temp files start with ".") are ignored. Entries with an image
    name that are no readable file (a folder, a broken link) are listed too: reading them fails
    with a message naming them, instead of the sample silently disappearing.
    """
    img_dir = split_dir(root, split) / IMG_DIR
    if not img_dir.is_dir():
        return []
    ids = {p.stem for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")}
    return sorted(ids)


# ---------------------------------------------------------------------------- normal maps


def valid_mask_of(normal: np.ndarray) -> np.ndarray:
    """Valid pixels of a float normal map: finite and not the zero vector."""
    finite = np.isfinite(normal).all(axis=-1)
    nonzero = np.any(np.where(np.isfinite(normal), normal, 0.0) != 0.0, axis=-1)
    return finite & nonzero


def encode_normal_png(normal: Any, mask: np.ndarray | None = None) -> np.ndarray:
    """Float normals (HxWx3 or 3xHxW, unit vectors) -> uint8 HxWx3 with pixel = round((n + 1) / 2 * 255).

    Invalid pixels (mask False; by default non-finite or zero vectors) become (0, 0, 0). A valid
    pixel never encodes to (0, 0, 0) — that would read back as invalid — so such a pixel gets its
    largest channel raised to 1 (only reachable by non-unit input: a unit vector always has a
    component > -0.58).
    """
    n = to_hwc(normal, "normal").astype(np.float32)
    valid = valid_mask_of(n) if mask is None else np.asarray(mask, dtype=bool).reshape(n.shape[:2])
    n = np.where(valid[..., None], np.nan_to_num(n, nan=0.0, posinf=1.0, neginf=-1.0), 0.0)
    pix = np.clip(np.rint((n + 1.0) * 127.5), 0, 255).astype(np.uint8)
    collide = valid & ~pix.any(axis=-1)
    if collide.any():
        rows, cols = np.nonzero(collide)
        pix[rows, cols, n[rows, cols].argmax(axis=-1)] = 1
    pix[~valid] = 0
    return pix


def decode_normal_png(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 -> (normal float32 HxWx3 = pixel / 255 * 2 - 1, zeroed where invalid; mask bool HxW).

    Not renormalised, exactly as the reference loader reads it.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise InputError(f"normal map: expected HxWx3 pixels, got shape {pixels.shape}")
    mask = pixels.any(axis=-1)
    normal = pixels.astype(np.float32) / 255.0 * 2.0 - 1.0
    normal[~mask] = 0.0
    return normal, mask


def check_normal_array(normal: np.ndarray, path: Path | str) -> np.ndarray:
    """Validate a loaded float normal map (HxWx3 float) and return it as float32."""
    if normal.ndim != 3 or normal.shape[-1] != 3:
        raise InputError(f"{path}: expected float normals of shape HxWx3, got {normal.shape}")
    if not np.issubdtype(normal.dtype, np.floating):
        raise InputError(f"{path}: expected float normals, got dtype {normal.dtype}")
    return normal.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- read / write


def write_sample(
    root: str | os.PathLike,
    split: str,
    sample_id: str,
    image: Any,
    normal: Any | None,
    caption: str,
    mask: np.ndarray | None = None,
    kappa: Any | None = None,
    float_normals: bool = True,
    depth: Any | None = None,
    classes: Any | None = None,
) -> SamplePaths:
    """Write one sample; each file atomically.

    image: uint8 HxWx3, or float in [-1, 1] (HxWx3 or 3xHxW). normal: float unit vectors HxWx3
    (or 3xHxW), or None for an unlabelled sample (image + caption only). mask: bool HxW of valid
    normals (default: finite, non-zero vectors); invalid pixels are written as zeros in both files.
    kappa: optional HxW confidence. float_normals: also write the lossless `norm_npy/<id>.npy`.
    depth: optional HxW metres (0 / non-finite = none) -> `depth/<id>.npy`; classes: optional HxW
    integer class ids (255 = ignore) -> `seg/<id>.png`.
    """
    if not sample_id or "/" in sample_id or sample_id.startswith("."):
        raise InputError(f"invalid sample id {sample_id!r}")
    d = split_dir(root, split)
    img = image_to_uint8(image)
    h, w = img.shape[:2]
    if normal is not None:
        n = to_hwc(normal, "normal").astype(np.float32)
        if n.shape[:2] != (h, w):
            raise InputError(f"{sample_id}: normal map is {n.shape[1]}x{n.shape[0]}, image is {w}x{h}")
        valid = valid_mask_of(n) if mask is None else np.asarray(mask, dtype=bool).reshape(h, w)
        n = np.where(valid[..., None], n, 0.0).astype(np.float32)
        save_png(d / NORM_DIR / f"{sample_id}.png", encode_normal_png(n, valid))
        if float_normals:
            save_npy(d / NORM_NPY_DIR / f"{sample_id}.npy", n)
    if kappa is not None:
        k = np.asarray(kappa.detach().cpu().numpy() if hasattr(kappa, "detach") else kappa, np.float32)
        k = k.reshape(h, w) if k.size == h * w else k
        if k.shape != (h, w):
            raise InputError(f"{sample_id}: kappa has shape {k.shape}, expected {(h, w)}")
        save_npy(d / KAPPA_DIR / f"{sample_id}.npy", k)
    if depth is not None or classes is not None:
        from diff2in1.data.labels import write_depth, write_seg

        lp = label_paths(root, split, sample_id)
        for what, arr in (("depth", depth), ("class map", classes)):
            if arr is None:
                continue
            a = np.asarray(arr.detach().cpu().numpy() if hasattr(arr, "detach") else arr)
            if a.shape != (h, w):
                raise InputError(f"{sample_id}: {what} has shape {a.shape}, expected {(h, w)}")
            write_depth(lp.depth_npy, a) if what == "depth" else write_seg(lp.seg, a)
    # Captions are one line: newlines inside would be read back as a different caption.
    save_text(d / CAPTION_DIR / f"{sample_id}.txt", " ".join(str(caption).split()) + "\n")
    # The image goes last: list_ids() keys on images, so a half-written sample is not listed.
    save_png(d / IMG_DIR / f"{sample_id}.png", img)
    return sample_paths(root, split, sample_id)


def read_caption(path: Path) -> str | None:
    """The caption text (first line, stripped), or None when the file is missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read caption ({type(e).__name__})") from None
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def read_normal(paths: SamplePaths, float_normals: FloatNormals = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(normal float32 HxWx3, mask bool HxW) from norm_npy (if allowed and present) or the PNG."""
    use_npy = paths.normal_npy.is_file() if float_normals == "auto" else bool(float_normals)
    if use_npy:
        n = check_normal_array(load_npy(paths.normal_npy), paths.normal_npy)
        mask = valid_mask_of(n)
        return np.where(mask[..., None], n, 0.0).astype(np.float32), mask
    return decode_normal_png(load_png_rgb_strict(paths.normal_png))


def read_sample(
    root: str | os.PathLike,
    split: str,
    sample_id: str,
    float_normals: FloatNormals = "auto",
    all_labels: bool = False,
) -> Sample:
    """Read one sample. Normals/kappa are None when their files are absent; a missing caption is "".
    `all_labels`: also read its depth and class map (`Sample.depth`, `Sample.classes`; None where
    absent)."""
    paths = sample_paths(root, split, sample_id)
    image = load_rgb(paths.image)
    normal = mask = kappa = None
    if paths.normal_npy.is_file() or paths.normal_png.is_file():
        normal, mask = read_normal(paths, float_normals)
        if normal.shape[:2] != image.shape[:2]:
            raise InputError(
                f"{paths.normal_png}: size {normal.shape[1]}x{normal.shape[0]} does not match image "
                f"{paths.image} ({image.shape[1]}x{image.shape[0]})"
            )
    if paths.kappa.is_file():
        kappa = load_npy(paths.kappa).astype(np.float32)
    depth = classes = None
    if all_labels:
        depth, classes = read_labels(root, split, sample_id, image.shape[:2], paths.image)
    caption = read_caption(paths.caption)
    return Sample(sample_id, image, caption or "", normal, mask, kappa, depth, classes)


def read_labels(
    root: str | os.PathLike,
    split: str,
    sample_id: str,
    size: tuple[int, int],
    image: Path | str,
    num_classes: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(depth metres HxW or None, class ids HxW or None) of a sample whose image is `size` (H, W).

    A label map of another size than the image is a one-line error naming the file.
    """
    from diff2in1.data.labels import read_depth, read_seg

    lp = label_paths(root, split, sample_id)
    depth = classes = None
    if lp.depth is not None:
        depth = read_depth(lp.depth)
        check_label_size(lp.depth, depth.shape, size, image)
    if lp.seg.is_file():
        classes = read_seg(lp.seg, num_classes)
        check_label_size(lp.seg, classes.shape, size, image)
    return depth, classes


def check_label_size(
    path: Path | str, shape: tuple[int, ...], size: tuple[int, int], image: Path | str
) -> None:
    """A one-line InputError naming `path` when its map's (H, W) differs from the image's."""
    if tuple(shape[:2]) != tuple(size):
        raise InputError(
            f"{path}: size {shape[1]}x{shape[0]} does not match image {image} ({size[1]}x{size[0]})"
        )


def is_complete(root: str | os.PathLike, split: str, sample_id: str, float_normals: bool = True) -> bool:
    """Whether every file write_sample would write for a labelled sample exists."""
    p = sample_paths(root, split, sample_id)
    files = [p.image, p.normal_png, p.caption] + ([p.normal_npy] if float_normals else [])
    return all(f.is_file() for f in files)


__all__ = [
    "CAPTION_DIR",
    "IMG_DIR",
    "KAPPA_DIR",
    "LabelPaths",
    "NORM_DIR",
    "NORM_NPY_DIR",
    "TMP_SUFFIX",
    "Sample",
    "SamplePaths",
    "decode_normal_png",
    "encode_normal_png",
    "find_image",
    "check_label_size",
    "is_complete",
    "label_paths",
    "list_ids",
    "read_caption",
    "read_labels",
    "read_normal",
    "read_sample",
    "sample_paths",
    "valid_mask_of",
    "write_sample",
]
