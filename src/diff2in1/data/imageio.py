"""Small image/array I/O helpers: atomic writes, cheap header reads, dtype conversions."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from diff2in1.atomic import TMP_SUFFIX, atomic_write, save_text  # noqa: F401  (re-exported)
from diff2in1.errors import InputError


def save_png(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Save a uint8 HxWx3 (or HxW) array as PNG, atomically."""
    img = Image.fromarray(np.ascontiguousarray(pixels))
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an array as .npy (lossless), atomically."""
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def png_header(path: str | os.PathLike) -> tuple[int, int, str]:
    """(width, height, PIL mode) from the file header only; no pixel decoding."""
    try:
        with Image.open(path) as img:
            return img.size[0], img.size[1], img.mode
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__})") from None


def npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file from its header only (memory map, no read)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable .npy file ({e})") from None
    return tuple(arr.shape), arr.dtype


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB (any PIL mode is converted, as the research code does)."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def load_png_rgb_strict(path: str | os.PathLike) -> np.ndarray:
    """Decode a PNG that must be 8-bit RGB (normal maps): uint8 HxWx3, else InputError."""
    try:
        with Image.open(path) as img:
            if img.mode != "RGB":
                raise InputError(f"{path}: expected an 8-bit RGB image (3 channels), got mode {img.mode}")
            img.load()
            return np.array(img)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Load a .npy file (no pickles), InputError on failure."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable .npy file ({e})") from None


def to_hwc(array: Any, name: str = "array") -> np.ndarray:
    """numpy/torch HxWx3 or 3xHxW -> numpy HxWx3 (3xHxW is recognised when the last dim is not 3)."""
    if hasattr(array, "detach"):  # torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"{name}: expected a HxWx3 or 3xHxW array, got shape {array.shape}")
    if array.shape[-1] == 3:
        return array
    if array.shape[0] == 3:
        return np.moveaxis(array, 0, -1)
    raise InputError(f"{name}: expected 3 channels, got shape {array.shape}")


def image_to_uint8(image: Any) -> np.ndarray:
    """uint8 HxWx3 as is; a float image is taken to be in [-1, 1] (the model's range) and quantised."""
    arr = to_hwc(image, "image")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"image: expected uint8 or float in [-1, 1], got dtype {arr.dtype}")
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
    return np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)
