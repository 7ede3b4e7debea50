"""Small image/array I/O helpers: atomic writes, cheap header reads, dtype conversions."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diff2in1.atomic import TMP_SUFFIX, atomic_write, save_text  # noqa: F401  (re-exported)
from diff2in1.errors import InputError
from diff2in1.limits import MAX_IMAGE_PIXELS
from diff2in1.regular_file import check_regular_file


def save_png(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Save a uint8 HxWx3 (or HxW) array as PNG, atomically."""
    img = Image.fromarray(np.ascontiguousarray(pixels))
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an array as .npy (lossless), atomically."""
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


@contextmanager
def image_errors(name: str | os.PathLike, what: str = "cannot decode image") -> Iterator[None]:
    """Turn every way PIL fails on a file into one InputError line naming `name`."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit (limits.py, below PIL's warning level) refuses such a file in one
            # line; PIL's warning would print a second one before it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except InputError:  # already one line naming the file (an InputError is a ValueError)
        raise
    except FileNotFoundError:
        kind = "broken link" if os.path.islink(name) else "file not found"
        raise InputError(f"{name}: {kind}") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a folder (directory), not an image file") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: image too large (PIL decompression-bomb check: {e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        msg = " ".join(str(e).split())
        raise InputError(f"{name}: {what} ({type(e).__name__}: {msg})") from None


def _too_large(name: str | os.PathLike, w: int, h: int, limit: int | None) -> None:
    if limit is not None and w * h > limit:
        raise InputError(f"{name}: image too large ({w}x{h} pixels, limit {limit})")


def png_header(
    path: str | os.PathLike, decode: bool = False, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> tuple[int, int, str]:
    """(width, height, PIL mode) from the file header; `decode=True` also decodes the pixels once,
    so a truncated or corrupt file fails here (at the start of a run) and not mid-run. Only a
    regular file is opened; one over `max_pixels` pixels is refused before decoding."""
    check_regular_file(path)
    with image_errors(path, "not a readable image"), Image.open(path) as img:
        _too_large(path, *img.size, max_pixels)
        if decode:
            img.load()
        return img.size[0], img.size[1], img.mode


def npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file from its header only (memory map, no read)."""
    check_regular_file(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable .npy file ({e})") from None
    return tuple(arr.shape), arr.dtype


def array_to_float(array: np.ndarray, name: str) -> np.ndarray:
    """An HxW / HxWx1 / HxWx3 / HxWx4 numpy image -> float32 HxWx3 RGB in [0, 1].

    uint8 is divided by 255 and uint16 by 65535; float16/32/64 must already lie in [0, 1].
    Grey is replicated to three channels, alpha is dropped. InputError names `name`.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3]
    elif array.ndim != 2:
        raise InputError(f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name}: empty image (shape {array.shape})")
    if array.dtype == np.uint8:
        out = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        out = array.astype(np.float32) / 65535.0
    elif array.dtype in (np.float16, np.float32, np.float64):
        if not np.isfinite(array).all():
            raise InputError(f"{name}: contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"{name}: values outside [0, 1] (min {lo:.4g}, max {hi:.4g}) for a float array")
        out = array.astype(np.float32)
    else:
        raise InputError(f"{name}: unsupported dtype {array.dtype} (use uint8, uint16 or float in [0, 1])")
    if out.ndim == 2:
        out = out[..., None]
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def pil_to_float(img: Image.Image, name: str) -> np.ndarray:
    """Any PIL image -> float32 HxWx3 RGB in [0, 1], scaled by its real bit depth.

    8-bit modes (RGB, RGBA without alpha, L, LA, P, CMYK, 1, ...) go through PIL's RGB
    conversion and /255. 16-bit grey (I;16, I;16B, I;16L) is /65535, not clipped to white as
    PIL's own conversion does. 32-bit integer grey (I) is /65535 when its values fit 16 bits
    (16-bit files that PIL widened) and /(2^31 - 1) otherwise; negative values are an error.
    Float grey (F) must lie in [0, 1].
    """
    mode = img.mode
    if mode.startswith("I;16") and not mode.endswith("S"):
        return array_to_float(np.asarray(img).astype(np.uint16), name)
    if mode == "I" or mode.startswith("I;"):
        a = np.asarray(img).astype(np.int64)
        if a.size and a.min() < 0:
            raise InputError(f"{name}: negative values in a {mode} (integer grey) image")
        if a.size == 0 or a.max() <= 65535:
            return array_to_float(a.astype(np.uint16), name)
        return array_to_float((a / (2.0**31 - 1)).astype(np.float32), name)
    if mode == "F":
        return array_to_float(np.asarray(img, dtype=np.float32), name)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns on P + transparency -> RGB directly
    if mode != "RGB":
        img = img.convert("RGB")
    return array_to_float(np.asarray(img), name)


def read_image_float(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    exif_transpose: bool = False,
    name: str | None = None,
) -> np.ndarray:
    """Decode an image file to float32 HxWx3 RGB in [0, 1] (see `pil_to_float`).

    Only a regular file is opened; `max_pixels` is checked on the header before decoding;
    `exif_transpose` applies the EXIF orientation tag. Every failure is an InputError naming
    `name` (default: the path).
    """
    name = str(path) if name is None else name
    check_regular_file(path, name)
    with image_errors(name), Image.open(path) as img:
        _too_large(name, *img.size, max_pixels)
        img.load()
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        return pil_to_float(img, name)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB (any PIL mode; 16-bit grey scaled down, not clipped)."""
    return np.rint(read_image_float(path) * 255.0).astype(np.uint8)


def load_png_rgb_strict(path: str | os.PathLike) -> np.ndarray:
    """Decode a PNG that must be 8-bit RGB (normal maps): uint8 HxWx3, else InputError."""
    check_regular_file(path)
    with image_errors(path), Image.open(path) as img:
        _too_large(path, *img.size, MAX_IMAGE_PIXELS)
        if img.mode != "RGB":
            raise InputError(f"{path}: expected an 8-bit RGB image (3 channels), got mode {img.mode}")
        img.load()
        return np.array(img)


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Load a .npy file (no pickles), InputError on failure; only a regular file is opened."""
    check_regular_file(path)
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
