"""torch Dataset over the data layout of docs/method.md section 5
(`<root>/<split>/{img,norm,caption}/<id>.*`).

Samples pair by identical file stem, never by zipping sorted lists. Construction is cheap and
strict: it checks that files exist and reads image headers (size/mode), so a broken dataset fails
before any model is loaded; pixels are decoded only in `__getitem__`.

Resizing (when `size` is given and differs from the file's size; the research code squashes any
aspect to 512x512), two modes:
- resize="research" (default): the Diff-2-in-1 research loader's recipe (docs/method.md
  section 5), in float64 with one bilinear implementation (`inference.image_processor.resize_image`:
  OpenCV INTER_LINEAR semantics, half-pixel centres, clamped borders, no antialiasing): image =
  pixel / 255, resized, x 2 - 1; normal = pixel / 255, resized (NOT renormalised), x 2 - 1; a
  pixel is valid only where the bilinearly resized 0/1 mask is exactly 1, i.e. where every source
  pixel it blends is valid (invalid pixels' normals are then set to 0).
- resize="nearest": the image bilinearly with PIL (as Bae et al.'s loader; PIL antialiases when
  shrinking, 8-bit result), the normal map and its mask with nearest neighbour, so an invalid
  pixel stays invalid and a valid vector stays a (unit) ground-truth vector, not a blend.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from diff2in1.data.layout import (
    NORM_DIR,
    FloatNormals,
    list_ids,
    read_caption,
    read_normal,
    sample_paths,
    split_dir,
    valid_mask_of,
)
from diff2in1.errors import InputError
from diff2in1.imaging.files import load_npy, load_png_rgb_strict, load_rgb, npy_header, png_header
from diff2in1.imaging.resize import (
    nearest_indices,
    resize_bilinear,
    resize_image,
    resize_nearest,
    resize_normals_research,
)
from diff2in1.regular_file import present

OnError = Literal["raise", "skip"]
ResizeMode = Literal["research", "nearest"]
RESIZE_MODES = ("research", "nearest")


def check_reading_options(on_error: str, resize: str) -> None:
    """The `on_error` and `resize` arguments every dataset here takes: InputError on another value."""
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if resize not in RESIZE_MODES:
        raise InputError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")


@dataclass(frozen=True)
class _Entry:
    id: str
    image: Path
    normal_png: Path
    normal_npy: Path | None  # set when the float copy is the source to read
    caption: Path
    has_caption: bool
    size: tuple[int, int]  # (H, W) of the image file (header)
    has_valid: bool = True  # at least one valid normal pixel


def _as_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise InputError(f"size must be positive, got {size}")
    return h, w


class NormalsDataset(Dataset):
    """Image / surface-normal / caption samples of one split.

    Args:
        root: dataset root; samples live in `root/split/...`.
        split: "train", "test", ...
        size: output (height, width), an int for square, or None to keep each file's size.
        float_normals: "auto" reads `norm_npy/<id>.npy` where it exists, else the PNG; True
            requires the .npy; False always reads the 8-bit PNG.
        on_error: "raise" -> InputError at construction for the first broken sample; "skip" -> leave
            broken samples out, list them in `self.skipped` as (id, reason) and warn once.
        labels: False for unlabelled images (only img [+ caption] needed); normal/mask are then
            zeros/False (targets come from a model, e.g. synthetic data).
        resize: "research" (default, the research loader's recipe) or "nearest" (see the module
            docstring); used only where `size` differs from a file's size.
        captions: False where captions are not used (perception, evaluation): they are then
            neither read nor checked, and items carry "".

    Every file is decoded once at construction, so a truncated or corrupt image, a normal map
    without an image, an undecodable caption or a data set without a single valid normal pixel
    fails (or, with on_error="skip", is left out and listed) before any model loads.

    Items: dict(image float32 (3,H,W) in [-1,1], normal float32 (3,H,W), mask bool (1,H,W),
    caption str, id str, index int).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        size: int | tuple[int, int] | None = (512, 512),
        float_normals: FloatNormals = "auto",
        on_error: OnError = "raise",
        labels: bool = True,
        resize: ResizeMode = "research",
        captions: bool = True,
    ) -> None:
        check_reading_options(on_error, resize)
        self.resize = resize
        if float_normals not in ("auto", True, False):
            raise InputError(f"float_normals must be 'auto', True or False, got {float_normals!r}")
        self.root = Path(root)
        self.split = split
        self.size = _as_size(size)
        self.float_normals = float_normals
        self.labels = labels
        self.captions = captions
        self.skipped: list[tuple[str, str]] = []

        ids = list_ids(root, split)
        if not ids:
            raise InputError(f"no images in {split_dir(root, split) / 'img'}")
        entries: list[_Entry] = []
        for sample_id in ids:
            try:
                entries.append(self._check(sample_id))
            except InputError as e:
                if on_error == "raise":
                    raise
                self.skipped.append((sample_id, str(e)))
        if labels:
            for orphan in orphan_normals(root, split):
                reason = f"{split_dir(root, split) / 'norm' / (orphan + '.png')}: normal map without an image"
                if on_error == "raise":
                    raise InputError(reason + " (remove it, add the image, or use --skip-bad-samples)")
                self.skipped.append((orphan, reason))
        self.entries = entries
        where = split_dir(root, split)
        if labels and entries and not any(e.has_valid for e in entries):
            raise InputError(f"{where}: no valid normal pixel in any sample (every normal is (0, 0, 0))")
        if self.skipped:
            first = self.skipped[0][1]
            warnings.warn(
                f"skipped {len(self.skipped)} of {len(ids)} samples in {where} (first: {first})",
                stacklevel=2,
            )
        if not entries:
            raise InputError(f"no usable samples in {where} ({len(self.skipped)} skipped)")
        missing = sum(not e.has_caption for e in entries) if captions else 0
        if missing:
            warnings.warn(
                f"{missing} of {len(entries)} samples in {where} have no caption file; using empty captions",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ construction checks

    def _check(self, sample_id: str) -> _Entry:
        """Validate one sample: decode its image and labels once, read its caption."""
        p = sample_paths(self.root, self.split, sample_id)
        w, h, _ = png_header(p.image, decode=True)  # any image mode is accepted and converted to RGB
        if self.captions and present(p.caption):
            read_caption(p.caption)  # an undecodable caption fails here, not mid-run
        npy: Path | None = None
        if self.labels:
            use_npy = present(p.normal_npy) if self.float_normals == "auto" else bool(self.float_normals)
            if use_npy:
                if not present(p.normal_npy):
                    raise InputError(f"{p.normal_npy}: float normals missing for image {p.image}")
                shape, dtype = npy_header(p.normal_npy)
                if len(shape) != 3 or shape[-1] != 3 or not np.issubdtype(dtype, np.floating):
                    raise InputError(f"{p.normal_npy}: expected float HxWx3 normals, got {dtype} {shape}")
                nh, nw = shape[0], shape[1]
                npy = p.normal_npy
                has_valid = bool(valid_mask_of(load_npy(p.normal_npy)).any())
            else:
                if not present(p.normal_png):
                    raise InputError(f"{p.normal_png}: normal map missing for image {p.image}")
                nw, nh, mode = png_header(p.normal_png)
                if mode != "RGB":
                    raise InputError(
                        f"{p.normal_png}: expected an 8-bit RGB normal map (3 channels), got mode {mode}"
                    )
                has_valid = bool(load_png_rgb_strict(p.normal_png).any())  # decodes it: truncation fails here
            if (nh, nw) != (h, w):
                src = npy or p.normal_png
                raise InputError(f"{src}: size {nw}x{nh} does not match image {p.image} ({w}x{h})")
        else:
            has_valid = True
        return _Entry(
            sample_id, p.image, p.normal_png, npy, p.caption, present(p.caption), (h, w), has_valid
        )

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def _load_image(self, e: _Entry) -> torch.Tensor:
        """float32 (3, H, W) in [-1, 1]."""
        img = load_rgb(e.image)
        if self.size is not None and img.shape[:2] != self.size:
            if self.resize == "research":  # pixel / 255 in float64, resized, x 2 - 1: no requantisation
                x = resize_image(torch.from_numpy(img).permute(2, 0, 1).double() / 255.0, self.size)
                return (x * 2.0 - 1.0).float()
            h, w = self.size
            img = np.array(Image.fromarray(img).resize((w, h), resample=Image.BILINEAR))
        return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0

    def _load_labels(self, e: _Entry) -> tuple[np.ndarray, np.ndarray]:
        """(normal HxWx3 float, zero where invalid; mask bool HxW) at the output size."""
        paths = sample_paths(self.root, self.split, e.id)
        resizing = self.size is not None and self.size != e.size

        def check(shape: tuple[int, ...]) -> None:
            if shape[:2] != e.size:
                src = e.normal_npy or e.normal_png
                raise InputError(f"{src}: size {shape[1]}x{shape[0]} does not match {e.image}")

        if resizing and self.resize == "research" and e.normal_npy is None:
            # The recipe from the 8-bit pixels: pixel / 255 in float64, resized, then x 2 - 1.
            pix = load_png_rgb_strict(paths.normal_png)
            check(pix.shape)
            n01, mask = resize_normals_research(pix / 255.0, pix.any(axis=-1), self.size)
            return np.where(mask[..., None], n01 * 2.0 - 1.0, 0.0), mask
        normal, mask = read_normal(paths, e.normal_npy is not None)
        check(normal.shape)
        if resizing and self.resize == "research":
            return resize_normals_research(normal, mask, self.size)
        if resizing:
            return resize_nearest(normal, self.size), resize_nearest(mask, self.size)
        return normal, mask

    def __getitem__(self, index: int) -> dict:
        e = self.entries[index]
        image = self._load_image(e)
        h, w = image.shape[1:]
        if self.labels:
            normal, mask = self._load_labels(e)
            normal_t = torch.from_numpy(np.ascontiguousarray(normal)).permute(2, 0, 1).float()
            mask_t = torch.from_numpy(np.ascontiguousarray(mask))[None]
        else:
            normal_t = torch.zeros(3, h, w)
            mask_t = torch.zeros(1, h, w, dtype=torch.bool)
        caption = (read_caption(e.caption) or "") if e.has_caption and self.captions else ""
        return {
            "image": image,
            "normal": normal_t,
            "mask": mask_t,
            "caption": caption,
            "id": e.id,
            "index": index,
        }


def orphan_normals(root: str | os.PathLike, split: str) -> list[str]:
    """Stems of normal maps that have no image (ignored by the dataset; useful for diagnostics)."""
    norm_dir = split_dir(root, split) / NORM_DIR
    if not norm_dir.is_dir():
        return []
    ids = set(list_ids(root, split))
    return sorted(p.stem for p in norm_dir.glob("*.png") if p.stem not in ids and not p.name.startswith("."))


__all__ = [
    "RESIZE_MODES",
    "NormalsDataset",
    "check_reading_options",
    "nearest_indices",
    "orphan_normals",
    "resize_bilinear",
    "resize_nearest",
    "resize_normals_research",
]
