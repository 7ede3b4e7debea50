"""`diff2in1.read_normals_png`: the 16-bit normal PNG read back at full precision (PIL reads 8 bits)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import diff2in1
from diff2in1.errors import InputError
from diff2in1.inference.image_processor import Diff2in1ImageProcessor


def _normals(h: int = 24, w: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = rng.normal(size=(h, w, 3)).astype(np.float32)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def test_the_16bit_png_round_trips_where_a_plain_read_does_not(tmp_path):
    n = _normals()
    path = Diff2in1ImageProcessor.export_normals_16bit_png(n, tmp_path / "x_normal16.png")
    back = diff2in1.read_normals_png(path)
    assert back.shape == n.shape and back.dtype == np.float32
    assert np.abs(back - n).max() <= 1.0 / 65535 + 1e-6  # half a 16-bit step, times 2
    naive = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255 * 2 - 1  # what PIL gives
    assert np.abs(naive - n).max() > 100 * np.abs(back - n).max()


def test_an_8bit_layout_png_reads_too_and_other_pngs_are_refused(tmp_path):
    n = _normals()
    Image.fromarray(np.rint((n + 1) / 2 * 255).astype(np.uint8)).save(tmp_path / "n8.png")
    assert np.abs(diff2in1.read_normals_png(tmp_path / "n8.png") - n).max() <= 1 / 255 + 1e-6
    Image.new("L", (4, 4)).save(tmp_path / "grey.png")
    with pytest.raises(InputError, match="RGB normals PNG"):
        diff2in1.read_normals_png(tmp_path / "grey.png")
