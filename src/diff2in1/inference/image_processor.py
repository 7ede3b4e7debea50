"""Images in and pictures out for inference.

`Diff2in1ImageProcessor` turns user images (PIL, numpy, torch, file paths) into float32
(3, H, W) tensors in [-1, 1], resizes them to the model's square input ("squash", as the
research code trained on NYUv2, or "keep_aspect" with edge-replicated padding) and undoes that
on the predicted maps. It also draws normals / uncertainty pictures and writes 16-bit PNG and
.npy exports atomically.

Input conventions: uint8 is /255 and uint16 /65535 (numpy arrays and PIL images); numpy float
arrays must lie in [0, 1]; torch float tensors are taken to be in [-1, 1] (the diffusers
convention), uint8 tensors in [0, 255].
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from diff2in1.atomic import atomic_write
from diff2in1.errors import InputError
from diff2in1.imaging.files import array_to_float, pil_to_float, read_image_float, to_hwc
from diff2in1.imaging.png16 import encode_png_16bit, read_normals_16bit_png, read_png_16bit
from diff2in1.imaging.resize import (
    check_resolution,
    keep_aspect_size,
    resize_image,
    resize_map,
    resize_normals,
)
from diff2in1.limits import MAX_IMAGE_PIXELS
from diff2in1.viz import (
    UNCERTAINTY_MAX_DEG,
    add_colorbar,
    colormap,
    default_font,
    expected_angular_error,
    normal_to_rgb,
)

DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS  # 64 megapixels (limits.py)
RESIZE_MODES = ("squash", "keep_aspect")
_TENSOR_RANGE_TOL = 1e-5  # float tensors may overshoot [-1, 1] by rounding; clamped

ImageInput = Image.Image | np.ndarray | torch.Tensor | str | os.PathLike


@dataclass(frozen=True)
class ResizeInfo:
    """What `preprocess` did to one image, so `postprocess` can undo it."""

    original_size: tuple[int, int]  # (H, W) of the input image
    resized_size: tuple[int, int]  # (h, w) of the resized image inside the model canvas
    resolution: int  # the square model canvas side
    resize_mode: str  # "squash" or "keep_aspect"

    @property
    def padding(self) -> tuple[int, int]:
        """(bottom, right) rows/columns of padding in the model canvas."""
        return self.resolution - self.resized_size[0], self.resolution - self.resized_size[1]


# ----------------------------------------------------------------------------- processor


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


class Diff2in1ImageProcessor:
    """Load, resize and un-resize images for the normal predictor; draw and export results.

    Args:
        max_pixels: largest accepted image (height * width); bigger inputs are an InputError.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = int(max_pixels)

    # --- loading

    def load(self, images: ImageInput | list[ImageInput] | tuple[ImageInput, ...]) -> list[torch.Tensor]:
        """One item or a list of PIL images, numpy arrays, torch tensors or file paths ->
        float32 (3, H, W) tensors in [-1, 1], one per image (a (B, 3, H, W) tensor gives B).

        - PIL: any mode; alpha dropped; 16-bit grey (I;16) /65535; see `imaging.files.pil_to_float`.
        - numpy: HxW, HxWx1, HxWx3, HxWx4; uint8 /255, uint16 /65535, float in [0, 1].
        - torch: (H, W), (1|3, H, W), (B, 1|3, H, W); float taken as [-1, 1], uint8 /255.
        - str / Path: decoded with PIL, EXIF orientation applied (not for PIL images passed in).
        Errors are InputError naming the path, "image" (single item) or "image i" (list item i).
        """
        is_list = isinstance(images, (list, tuple))
        items = list(images) if is_list else [images]
        if not items:
            raise InputError("images: empty list")
        out: list[torch.Tensor] = []
        for i, item in enumerate(items):
            out.extend(self._load_one(item, f"image {i}" if is_list else "image"))
        return out

    def _check_pixels(self, h: int, w: int, name: str) -> None:
        if h * w > self.max_pixels:
            raise InputError(f"{name}: image too large ({w}x{h} pixels, limit {self.max_pixels})")

    def _load_one(self, item: Any, name: str) -> list[torch.Tensor]:
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            if isinstance(path, str) and path.startswith(("http://", "https://")):
                raise InputError(f"{path}: URLs are not supported; download the file first")
            arr = read_image_float(path, max_pixels=self.max_pixels, exif_transpose=True)
        elif isinstance(item, Image.Image):
            self._check_pixels(item.height, item.width, name)
            if item.width == 0 or item.height == 0:
                raise InputError(f"{name}: empty image ({item.width}x{item.height})")
            try:
                arr = pil_to_float(item, name)
            except (OSError, ValueError, SyntaxError) as e:  # a lazily opened, broken file
                why = (str(e).splitlines() or [""])[0]
                raise InputError(f"{name}: cannot decode image ({type(e).__name__}: {why})") from None
        elif isinstance(item, np.ndarray):
            if item.ndim in (2, 3):
                self._check_pixels(item.shape[0], item.shape[1], name)
            arr = array_to_float(item, name)
        elif isinstance(item, torch.Tensor):
            return self._load_tensor(item, name)
        else:
            raise InputError(
                f"{name}: unsupported input type {type(item).__name__} "
                "(use a PIL image, numpy array, torch tensor or file path)"
            )
        x = torch.from_numpy(arr).permute(2, 0, 1)  # (3, H, W) in [0, 1]
        return [(x * 2.0 - 1.0).contiguous()]

    def _load_tensor(self, t: torch.Tensor, name: str) -> list[torch.Tensor]:
        t = t.detach()
        shape = tuple(t.shape)
        if t.ndim == 2:
            t = t[None]
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4:
            raise InputError(f"{name}: expected a (H, W), (C, H, W) or (B, C, H, W) tensor, got {shape}")
        if t.shape[1] not in (1, 3):
            raise InputError(f"{name}: expected 1 or 3 channels (channels first), got shape {shape}")
        if 0 in t.shape:
            raise InputError(f"{name}: empty image (shape {shape})")
        self._check_pixels(t.shape[2], t.shape[3], name)
        if t.dtype == torch.uint8:
            t = t.float() / 127.5 - 1.0
        elif t.is_floating_point():
            t = t.float()
            if not torch.isfinite(t).all():
                raise InputError(f"{name}: contains NaN or infinite values")
            lo, hi = float(t.min()), float(t.max())
            if lo < -1.0 - _TENSOR_RANGE_TOL or hi > 1.0 + _TENSOR_RANGE_TOL:
                raise InputError(
                    f"{name}: values outside [-1, 1] (min {lo:.4g}, max {hi:.4g}); float tensors are "
                    "taken as [-1, 1] (map [0, 1] data with x * 2 - 1, or pass a numpy array)"
                )
            t = t.clamp(-1.0, 1.0)
        else:
            raise InputError(f"{name}: unsupported tensor dtype {t.dtype} (use float in [-1, 1] or uint8)")
        t = t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t
        return [b.contiguous() for b in t]

    # --- resizing

    def preprocess(
        self, x: torch.Tensor, resolution: int, resize_mode: str = "squash"
    ) -> tuple[torch.Tensor, ResizeInfo]:
        """One (3, H, W) image in [-1, 1] -> (3, resolution, resolution) model input and its ResizeInfo.

        "squash": bilinear resize to resolution x resolution (the research recipe, aspect lost).
        "keep_aspect": longest edge -> resolution, then edge-replicated padding right and bottom.
        """
        resolution = check_resolution(resolution)
        if resize_mode not in RESIZE_MODES:
            raise InputError(f"resize_mode: expected one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[0] != 3 or 0 in x.shape:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise InputError(f"image: expected a (3, H, W) tensor (see load()), got {shape}")
        size = (int(x.shape[1]), int(x.shape[2]))
        x = x.float()
        if resize_mode == "squash":
            target = (resolution, resolution)
            return resize_image(x, target), ResizeInfo(size, target, resolution, resize_mode)
        target = keep_aspect_size(size, resolution)
        y = resize_image(x, target)  # (3, h, w)
        ph, pw = resolution - target[0], resolution - target[1]
        if ph or pw:
            y = F.pad(y[None], (0, pw, 0, ph), mode="replicate")[0]
        return y, ResizeInfo(size, target, resolution, resize_mode)

    def preprocess_batch(
        self, images: list[torch.Tensor], resolution: int, resize_mode: str = "squash"
    ) -> tuple[torch.Tensor, list[ResizeInfo]]:
        """`preprocess` each (3, H, W) image and stack: (B, 3, resolution, resolution), infos."""
        pairs = [self.preprocess(x, resolution, resize_mode) for x in images]
        return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]

    def postprocess(
        self,
        maps: torch.Tensor,
        info: ResizeInfo,
        match_input_resolution: bool = True,
        renormalize: bool = False,
    ) -> torch.Tensor:
        """Prediction maps (C, R, R) or (B, C, R, R) at the model resolution R -> crop the padding,
        then (match_input_resolution) resize bilinearly to the original (H, W); else the unpadded
        model-size map. `renormalize=True` for normals makes resized vectors unit length.
        """
        r = info.resolution
        if maps.ndim not in (3, 4) or tuple(maps.shape[-2:]) != (r, r):
            raise ValueError(f"maps: expected (C, {r}, {r}) or (B, C, {r}, {r}), got {tuple(maps.shape)}")
        h, w = info.resized_size
        maps = maps[..., :h, :w]
        if not match_input_resolution or (h, w) == info.original_size:
            return maps
        if renormalize:
            return resize_normals(maps, info.original_size)
        return resize_map(maps, info.original_size)

    # --- pictures

    @staticmethod
    def visualize_normals(normals: torch.Tensor | np.ndarray) -> list[Image.Image]:
        """Normals -> RGB pictures, colour (n + 1) / 2 * 255 (viz.normal_to_rgb).

        Tensors are channels first, (3, H, W) or (B, 3, H, W); numpy arrays channels last,
        (H, W, 3) or (B, H, W, 3).
        """
        if isinstance(normals, torch.Tensor):
            if normals.ndim not in (3, 4) or normals.shape[-3] != 3:
                shape = tuple(normals.shape)
                raise InputError(f"normals: expected a (3, H, W) or (B, 3, H, W) tensor, got {shape}")
            arr = _to_numpy(normals.reshape(-1, *normals.shape[-3:]).permute(0, 2, 3, 1))
        else:
            arr = np.asarray(normals, np.float32)
            if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
                raise InputError(f"normals: expected a (H, W, 3) or (B, H, W, 3) array, got {arr.shape}")
            arr = arr.reshape(-1, *arr.shape[-3:])
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=-1.0)
        return [Image.fromarray(normal_to_rgb(n)) for n in arr]

    @staticmethod
    def visualize_uncertainty(
        kappa_or_uncertainty_deg: torch.Tensor | np.ndarray,
        colorbar: bool = True,
        vmax_deg: float | str | None = None,
        input_kind: str = "kappa",
    ) -> list[Image.Image]:
        """kappa (input_kind="kappa") or expected angular error in degrees (input_kind="degrees")
        -> colour pictures of the expected angular error, with a degree colour bar on the right.

        Shapes: (H, W), (B, H, W), (B, 1, H, W) or (B, H, W, 1). The colour scale runs from 0 to
        vmax_deg degrees; None: `viz.UNCERTAINTY_MAX_DEG` (45), the same for every picture so they
        compare; "auto": a round scale at or above the batch's 99th percentile.
        """
        if input_kind not in ("kappa", "degrees"):
            raise InputError(f"input_kind: expected 'kappa' or 'degrees', got {input_kind!r}")
        a = _to_numpy(kappa_or_uncertainty_deg).astype(np.float64)
        if a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        elif a.ndim == 4 and a.shape[-1] == 1:
            a = a[..., 0]
        elif a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or 0 in a.shape:
            raise InputError(f"uncertainty: expected (H, W), (B, H, W) or (B, 1, H, W), got {a.shape}")
        deg = np.degrees(expected_angular_error(a)) if input_kind == "kappa" else a
        deg = np.nan_to_num(deg, nan=0.0, posinf=180.0, neginf=0.0)
        if vmax_deg is None:
            vmax_deg = UNCERTAINTY_MAX_DEG
        if vmax_deg == "auto":
            p99 = float(np.percentile(deg, 99))
            vmax_deg = next((v for v in (5, 10, 15, 20, 30, 45, 60, 90, 120, 180) if v >= p99), 180)
        elif isinstance(vmax_deg, str) or not vmax_deg > 0:
            raise InputError(f"vmax_deg: must be positive, got {vmax_deg}")
        pics = [colormap(d, float(vmax_deg)) for d in deg]
        if colorbar:
            return [add_colorbar(p, float(vmax_deg)) for p in pics]
        return [Image.fromarray(p) for p in pics]

    @staticmethod
    def side_by_side(images: list[Image.Image], labels: list[str] | None = None, pad: int = 4) -> Image.Image:
        """Pictures in one row on white (each scaled to the tallest height), optional labels above."""
        if not images:
            raise InputError("images: empty list")
        if labels is not None and len(labels) != len(images):
            raise InputError(f"labels: expected {len(images)} labels, got {len(labels)}")
        h = max(im.height for im in images)
        tiles = [
            im.convert("RGB")
            if im.height == h
            else im.convert("RGB").resize((max(1, round(im.width * h / im.height)), h), Image.BILINEAR)
            for im in images
        ]
        font = default_font(max(11, h // 24))
        top = 0
        if labels:
            probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
            top = max(probe.textbbox((0, 0), s, font=font)[3] for s in labels) + pad
        width = sum(t.width for t in tiles) + pad * (len(tiles) + 1)
        out = Image.new("RGB", (width, h + top + 2 * pad), "white")
        draw, x = ImageDraw.Draw(out), pad
        for i, t in enumerate(tiles):
            if labels:
                draw.text((x, pad), labels[i], fill=(0, 0, 0), font=font)
            out.paste(t, (x, pad + top))
            x += t.width + pad
        return out

    # --- exports

    @staticmethod
    def export_normals_16bit_png(normals_hw3: np.ndarray | torch.Tensor, path: str | os.PathLike) -> Path:
        """Write normals (H, W, 3) in [-1, 1] as a 16-bit RGB PNG of (n + 1) / 2 * 65535, atomically.

        Read it back at full precision with `read_normals_16bit_png` (PIL reads only 8 bits).
        NaN becomes 0 (mid grey); values are clipped to [-1, 1].
        """
        n = to_hwc(normals_hw3, "normals").astype(np.float64)
        n = np.nan_to_num(n, nan=0.0, posinf=1.0, neginf=-1.0).clip(-1.0, 1.0)
        data = encode_png_16bit(np.rint((n + 1.0) * 0.5 * 65535.0).astype(np.uint16))
        atomic_write(path, lambda f: f.write(data))
        return Path(path)

    @staticmethod
    def export_npy(array: np.ndarray | torch.Tensor, path: str | os.PathLike) -> Path:
        """Write an array (or tensor, moved to the CPU) as .npy without pickles, atomically."""
        a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        return Path(path)


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "RESIZE_MODES",
    "Diff2in1ImageProcessor",
    "ResizeInfo",
    "encode_png_16bit",
    "keep_aspect_size",
    "read_normals_16bit_png",
    "read_png_16bit",
    "resize_image",
    "resize_map",
    "resize_normals",
]
