"""Resizing images, maps and normals: the package's one bilinear resize and its nearest resize.

Both inference (model-size resizing and its undo) and data loading (the research recipe) use these;
they live below both so neither imports the other.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diff2in1.errors import InputError


def check_size(size: Any) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"size: expected (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"size: expected positive (height, width), got {size!r}")
    return h, w


def _resize(x: torch.Tensor, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Bilinear (align_corners False, no antialias) over the last two dims of (..., H, W)."""
    if x.ndim < 2:
        raise InputError(f"resize: expected a (..., H, W) tensor, got shape {tuple(x.shape)}")
    lead, (hh, ww) = x.shape[:-2], x.shape[-2:]
    y = x.reshape(1, -1, hh, ww).to(dtype)
    y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=False)
    return y.reshape(*lead, *size)


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The research image resize: bilinear, align_corners=False, no antialias, on float values.

    This is OpenCV's INTER_LINEAR (half-pixel centres, clamped borders), also when shrinking.
    x: (..., H, W) float tensor, e.g. (3, H, W) or (B, 3, H, W); returns (..., h, w) in x's
    float dtype (float32 for integer input). Computed in float64 where the device has it, so
    the result is the exact bilinear value rounded once.
    """
    size = check_size(size)
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    if tuple(x.shape[-2:]) == size:
        return x.to(out_dtype, copy=True)
    work = torch.float32 if x.device.type == "mps" else torch.float64
    return _resize(x, size, work).to(out_dtype)


def resize_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners False) of maps (..., h, w), e.g. kappa (B, 1, h, w)."""
    size = check_size(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return _resize(x, size, x.dtype if x.is_floating_point() else torch.float32)


def resize_normals(normal: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of normals (3, h, w) or (B, 3, h, w), renormalised to unit length."""
    if normal.ndim < 3 or normal.shape[-3] != 3:
        raise InputError(f"normals: expected (3, H, W) or (B, 3, H, W), got shape {tuple(normal.shape)}")
    normal = resize_map(normal, size)
    return normal / (torch.linalg.vector_norm(normal, dim=-3, keepdim=True) + 1e-10)


def check_resolution(resolution: Any) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise InputError(f"resolution: expected an int, got {resolution!r}")
    if resolution <= 0 or resolution % 64:
        raise InputError(f"resolution: must be a positive multiple of 64, got {resolution}")
    return int(resolution)


def keep_aspect_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(H, W) -> (h, w) with the longest edge = resolution, the other rounded (half up), >= 1."""
    h, w = size
    long = max(h, w)

    def side(n: int) -> int:
        return resolution if n == long else max(1, int(math.floor(n * resolution / long + 0.5)))

    return side(h), side(w)


# ----------------------------------------------------------------------------- numpy arrays (data loading)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest resizing (pixel-centre rule, as PIL NEAREST)."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW[xC] array to size=(H, W)."""
    h, w = array.shape[:2]
    if (h, w) == tuple(size):
        return array
    return array[nearest_indices(h, size[0])][:, nearest_indices(w, size[1])]


def resize_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an HxW[xC] array to size=(H, W) in float64: `resize_image` (OpenCV
    INTER_LINEAR semantics, no antialias) on a numpy array. Same size: a float64 copy."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    out = resize_image(t, size)
    return (out[0] if array.ndim == 2 else out.permute(1, 2, 0)).numpy()


def resize_normals_research(
    normal: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The research loader's normal resize: bilinear, not renormalised; valid where every blended
    source pixel is. `normal` in any affine encoding (e.g. pixel / 255): bilinear commutes with it.
    Returns (float64 HxWx3 with invalid pixels 0, bool HxW)."""
    # Valid where bilinear(mask) == 1 exactly (the research code's test on cv2.resize), computed as
    # bilinear(1 - mask) == 0: the same in exact arithmetic, and an all-valid neighbourhood gives
    # exactly 0 (0 * w), whereas torch's float64 weights can sum to 1 +- 1 ulp at some ratios (cv2's
    # do not), so `== 1` would drop valid pixels and a tolerance keep pixels that blend an invalid
    # one. Checked against cv2.resize (INTER_LINEAR, float64): identical masks, also at odd ratios.
    new_mask = resize_bilinear(1.0 - mask.astype(np.float64), size) == 0.0
    new_normal = resize_bilinear(normal, size)
    new_normal[~new_mask] = 0.0
    return new_normal, new_mask
