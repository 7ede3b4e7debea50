"""Batched paths: every image's result is the same at batch size 1, 3 and 4 (tiny backbone, CPU),
for perception (`pipe(images, batch_size=B)`, evaluate) and creation (`pipe.create`, create-data)."""

from __future__ import annotations

import numpy as np
import pytest

from diff2in1 import Diff2in1Pipeline
from diff2in1.config import CreateConfig
from diff2in1.data import NormalsDataset, read_sample
from diff2in1.heads import NormalHead
from diff2in1.inference.predictor import NormalPredictor
from diff2in1.stages.create import create_data
from diff2in1.stages.evaluate import evaluate

SIZES = (1, 3, 4)


@pytest.fixture(scope="module")
def pipe(tiny_backbone, small_head_dir):
    return Diff2in1Pipeline.from_backbone(tiny_backbone, NormalHead.from_pretrained(small_head_dir))


@pytest.fixture(scope="module")
def images(scenes_root):
    ds = NormalsDataset(scenes_root, "train", size=(64, 64), labels=False)
    return [ds[i]["image"] for i in range(5)]  # 5: batches of 3 and 4 leave a short last batch


def _max_diff(runs: dict[int, np.ndarray]) -> float:
    ref = runs[1]
    return max(float(np.abs(r - ref).max()) for r in runs.values())


def test_perception_does_not_depend_on_the_batch_size(pipe, images, scenes_root):
    runs = {b: pipe(images, batch_size=b, show_progress_bar=False) for b in SIZES}
    assert runs[1].normals.shape == (5, 64, 64, 3)
    assert _max_diff({b: r.normals for b, r in runs.items()}) < 1e-4
    assert _max_diff({b: r.kappa for b, r in runs.items()}) < 1e-3
    assert np.abs(runs[1].normals[0] - runs[1].normals[1]).max() > 1e-3  # really other images
    predictor = NormalPredictor(pipe.backbone, pipe.head)
    rows = {
        b: evaluate(predictor, scenes_root, "train", batch_size=b, progress=False).per_image for b in SIZES
    }
    for b in SIZES:
        assert [r["id"] for r in rows[b]] == [r["id"] for r in rows[1]]
        assert np.allclose([r["mean"] for r in rows[b]], [r["mean"] for r in rows[1]], atol=1e-3)


def test_creation_does_not_depend_on_the_batch_size(pipe, images, scenes_root, tmp_path):
    kw = dict(t_start=60, steps=3, show_progress_bar=False)
    seeds = [11, 12, 13, 14, 15]
    runs = {b: pipe.create(images, "a room", seed=seeds, batch_size=b, **kw) for b in SIZES}
    assert runs[1].images.shape == (5, 64, 64, 3)
    assert _max_diff({b: r.images for b, r in runs.items()}) < 1e-4
    assert _max_diff({b: r.normals for b, r in runs.items()}) < 1e-4
    made = {}
    for b in SIZES:
        cfg = CreateConfig(
            data=str(scenes_root),
            backbone="tiny",
            out=str(tmp_path / f"b{b}"),
            resolution=(64, 64),
            t_start=60,
            steps=3,
            batch_size=b,
            progress=False,
            preview=0,
        )
        create_data(cfg, pipe.backbone, pipe.head)
        ids = [f"scene_{i:06d}_syn0" for i in range(8)]
        made[b] = (
            np.stack([read_sample(cfg.out, "train", i).image for i in ids]).astype(int),
            np.stack([np.load(tmp_path / f"b{b}" / "train" / "norm_npy" / f"{i}.npy") for i in ids]),
        )
        assert np.abs(made[b][0] - made[1][0]).max() <= 1  # 8-bit images: one level at most
        assert np.abs(made[b][1] - made[1][1]).max() < 1e-4
