"""16-bit RGB PNG: encode and decode (PIL writes no 16-bit RGB PNG and reads one as 8-bit)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from diff2in1.errors import InputError


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png_16bit(rgb16: np.ndarray) -> bytes:
    """uint16 (H, W, 3) -> bytes of a 16-bit RGB PNG (Sub filter, zlib), which PIL cannot write."""
    rgb16 = np.asarray(rgb16)
    if rgb16.dtype != np.uint16 or rgb16.ndim != 3 or rgb16.shape[-1] != 3 or 0 in rgb16.shape:
        raise InputError(f"png: expected a non-empty uint16 (H, W, 3) array, got {rgb16.dtype} {rgb16.shape}")
    h, w, _ = rgb16.shape
    raw = np.ascontiguousarray(rgb16.astype(">u2")).view(np.uint8).reshape(h, w * 6)
    rows = np.empty((h, 1 + w * 6), np.uint8)
    rows[:, 0] = 1  # filter "Sub": each byte minus the byte one pixel (6 bytes) to its left
    rows[:, 1:7] = raw[:, :6]
    rows[:, 7:] = raw[:, 6:] - raw[:, :-6]  # uint8 arithmetic wraps mod 256, as PNG wants
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit, truecolour, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def _unfilter_slow(kind: int, line: bytearray, prev: bytes, bpp: int) -> None:
    """PNG filters 3 (Average) and 4 (Paeth), in place, byte by byte."""
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        if kind == 3:
            line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
        else:
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + pred) & 0xFF


def read_png_16bit(path: str | os.PathLike) -> np.ndarray:
    """Decode a non-interlaced 8/16-bit grey/RGB(A) PNG to (H, W, C) uint8/uint16, full precision.

    PIL reads 16-bit RGB PNGs as 8-bit; this reads back `export_normals_16bit_png` files (and
    other encoders' files: filters 3 and 4 take a slow per-byte path).
    """
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: file not found") from None
    except OSError as e:
        raise InputError(f"{name}: cannot read ({type(e).__name__})") from None
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise InputError(f"{name}: not a PNG file")
    pos, idat, ihdr = 8, [], None
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if ihdr is None or not idat:
        raise InputError(f"{name}: truncated PNG (no IHDR or IDAT)")
    w, h, depth, ctype, _, _, interlace = ihdr
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if channels is None or depth not in (8, 16) or interlace:
        what = f"bit depth {depth}, colour type {ctype}" + (", interlaced" if interlace else "")
        raise InputError(f"{name}: unsupported PNG ({what})")
    bpp = channels * depth // 8
    stride = w * bpp
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise InputError(f"{name}: corrupt PNG data ({e})") from None
    if len(raw) < h * (stride + 1):
        raise InputError(f"{name}: truncated PNG data")
    rows = np.frombuffer(raw, np.uint8, count=h * (stride + 1)).reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        kind, line = int(rows[y, 0]), rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # running sum per byte position within a pixel, mod 256
            cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint64).astype(np.uint8).reshape(-1)
        elif kind == 2:
            cur = line + prev
        elif kind in (3, 4):
            buf = bytearray(line.tobytes())
            _unfilter_slow(kind, buf, prev.tobytes(), bpp)
            cur = np.frombuffer(bytes(buf), np.uint8)
        else:
            raise InputError(f"{name}: bad PNG filter type {kind} in row {y}")
        out[y] = cur
        prev = cur
    dtype = ">u2" if depth == 16 else np.uint8
    return out.view(dtype).reshape(h, w, channels).astype(np.uint16 if depth == 16 else np.uint8)


def read_normals_16bit_png(path: str | os.PathLike) -> np.ndarray:
    """A 16-bit normals PNG written by `export_normals_16bit_png` -> float32 (H, W, 3) in [-1, 1]."""
    rgb = read_png_16bit(path)
    if rgb.dtype != np.uint16 or rgb.shape[-1] != 3:
        raise InputError(f"{path}: expected a 16-bit RGB PNG, got {rgb.dtype} with {rgb.shape[-1]} channels")
    return (rgb.astype(np.float32) / 65535.0) * 2.0 - 1.0
