"""The training data follow the research recipe (docs/method.md section 5) by default.

The reference below is written from the recipe's text alone, in float64 numpy with explicit
gathers over source coordinates (OpenCV INTER_LINEAR: half-pixel centres, clamped borders, no
antialias); it calls none of the project's code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diff2in1.config import WarmupConfig
from diff2in1.data import NormalsDataset
from diff2in1.data.dataset import resize_normals_research
from diff2in1.training.loop import EpochBatches

SRC_H, SRC_W = 480, 640  # NYUv2's size
OUT = (512, 512)


def ref_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices and their weights (OpenCV INTER_LINEAR)."""
    i0, i1, w0, w1 = [], [], [], []
    scale = n_in / n_out
    for d in range(n_out):
        src = (d + 0.5) * scale - 0.5  # half-pixel centres
        if src < 0:  # clamped border on the left/top
            src = 0.0
        lo = int(np.floor(src))
        if lo >= n_in - 1:  # clamped border on the right/bottom
            lo, frac = n_in - 1, 0.0
        else:
            frac = src - lo
        i0.append(lo)
        i1.append(min(lo + 1, n_in - 1))
        w0.append(1.0 - frac)
        w1.append(frac)
    return np.array(i0), np.array(i1), np.array(w0), np.array(w1)


def ref_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWxC float64 -> size, bilinear by gathering the four source pixels of each output pixel."""
    y0, y1, wy0, wy1 = ref_axis(a.shape[0], size[0])
    x0, x1, wx0, wx1 = ref_axis(a.shape[1], size[1])
    out = np.zeros((*size, a.shape[2]), np.float64)
    for ys, wy in ((y0, wy0), (y1, wy1)):
        for xs, wx in ((x0, wx0), (x1, wx1)):
            out += (wy[:, None] * wx[None, :])[..., None] * a[ys[:, None], xs[None, :]]
    return out


def ref_recipe(img_pix: np.ndarray, norm_pix: np.ndarray, size: tuple[int, int]):
    image = ref_bilinear(img_pix.astype(np.float64) / 255.0, size) * 2.0 - 1.0
    normal = ref_bilinear(norm_pix.astype(np.float64) / 255.0, size) * 2.0 - 1.0
    valid = np.any(norm_pix != 0, axis=-1).astype(np.float64)[..., None]
    mask = ref_bilinear(valid, size)[..., 0] == 1.0  # exactly 1
    return image, normal, mask


@pytest.fixture(scope="module")
def nyu_like(tmp_path_factory):
    """One 640x480 sample: a smooth + noisy image, a normal map with invalid (0,0,0) regions."""
    root = tmp_path_factory.mktemp("nyu_like")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SRC_H, 0:SRC_W]
    img = np.stack([xx * 255 / SRC_W, yy * 255 / SRC_H, (xx + yy) % 256], -1)
    img = np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8)
    n = rng.normal(size=(SRC_H, SRC_W, 3)) * 0.3 + np.array([0.0, 0.0, 1.0])
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    norm = np.clip(np.rint((n + 1) * 127.5), 1, 255).astype(np.uint8)  # all valid so far
    norm[100:180, 200:330] = 0  # an invalid block
    norm[:, :7] = 0  # an invalid border, as NYUv2's
    norm[rng.random((SRC_H, SRC_W)) < 0.01] = 0  # scattered invalid pixels
    for sub in ("img", "norm", "caption"):
        (root / "train" / sub).mkdir(parents=True)
    Image.fromarray(img).save(root / "train" / "img" / "s0.png")
    Image.fromarray(norm).save(root / "train" / "norm" / "s0.png")
    (root / "train" / "caption" / "s0.txt").write_text("a room\n")
    return root, img, norm


def test_training_tensors_follow_the_research_recipe(nyu_like):
    root, img, norm = nyu_like
    ds = NormalsDataset(root, "train", size=OUT)  # the default resize is the research recipe
    assert ds.resize == "research"
    item = ds[0]
    image, normal, mask = ref_recipe(img, norm, OUT)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, *OUT)
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), image, rtol=0, atol=1e-6)
    got_mask = item["mask"][0].numpy()
    np.testing.assert_array_equal(got_mask, mask)
    assert 0.5 < mask.mean() < 0.99  # the invalid regions are there, eroded
    # Erosion: more invalid pixels than the source's share (a pixel blending any invalid one is out).
    assert 1 - mask.mean() > (norm == 0).all(-1).mean() + 0.01
    got = item["normal"].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got[mask], normal[mask], rtol=0, atol=1e-6)
    assert not got[~mask].any()  # invalid pixels carry no vector
    # Not renormalised: the bilinear blend of unit vectors is shorter than 1 somewhere.
    assert np.linalg.norm(got[mask], axis=-1).min() < 0.99


def test_same_size_is_not_resized(nyu_like):
    root, img, norm = nyu_like
    item = NormalsDataset(root, "train", size=(SRC_H, SRC_W))[0]
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), img / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(item["mask"][0].numpy(), norm.any(-1))
    valid = norm.any(-1)
    np.testing.assert_allclose(
        item["normal"].permute(1, 2, 0).numpy()[valid], norm[valid] / 255 * 2 - 1, atol=1e-6
    )


@pytest.mark.parametrize("src,dst", [((50, 54), (11, 67)), ((71, 43), (53, 74)), ((9, 29), (19, 78))])
def test_mask_is_exact_at_any_ratio(src, dst):
    # Float bilinear weights need not sum to exactly 1 at such ratios; an all-valid map must stay
    # all valid, and one invalid pixel must invalidate exactly the outputs that blend it.
    rng = np.random.default_rng(1)
    normal = rng.normal(size=(*src, 3))
    _, m = resize_normals_research(normal, np.ones(src, bool), dst)
    assert m.all()
    mask = np.ones(src, bool)
    mask[src[0] // 2, src[1] // 3] = False
    _, m = resize_normals_research(normal, mask, dst)
    value = ref_bilinear(mask.astype(np.float64)[..., None], dst)[..., 0]
    np.testing.assert_array_equal(m, value > 1 - 1e-12)
    assert not m.all()


def test_drop_last_and_shuffle_each_epoch():
    assert WarmupConfig().drop_last is True and WarmupConfig().resize == "research"
    epochs = [EpochBatches(10, 4, seed=42, epoch=e, drop_last=True).batches() for e in range(3)]
    assert [len(b) for b in epochs] == [2, 2, 2]  # 10 samples at batch 4: 2 steps, no short batch
    assert all(len(batch) == 4 for b in epochs for batch in b)
    assert len({tuple(x for batch in b for x in batch) for b in epochs}) == 3  # reshuffled
    assert len(EpochBatches(10, 4, seed=42, epoch=0, drop_last=False).batches()) == 3
    # Split over 2 processes, the global batches stay the same.
    parts = [EpochBatches(10, 4, 42, 0, rank=r, world=2, drop_last=True).batches() for r in range(2)]
    assert [a + b for a, b in zip(*parts, strict=True)] == epochs[0]


def test_drop_last_steps_of_a_training_run(tmp_path, tiny_backbone):
    from diff2in1.data.scenes import make_scenes
    from diff2in1.stages.warmup import train_warmup

    make_scenes(tmp_path / "d", 10, 1, size=64, seed=0, progress=False)
    common = dict(
        data=str(tmp_path / "d"),
        backbone="tiny",
        head="small",
        resolution=(64, 64),
        batch_size=4,
        epochs=1,
        progress=False,
        num_workers=0,
        checkpoint_every=0,
    )
    assert train_warmup(WarmupConfig(**common, out=str(tmp_path / "a")), backbone=tiny_backbone).steps == 2
    no_drop = WarmupConfig(**common, out=str(tmp_path / "b"), drop_last=False)
    assert train_warmup(no_drop, backbone=tiny_backbone).steps == 3


def test_matches_opencv_where_installed(nyu_like):
    """The recipe is the research code's cv2.resize (INTER_LINEAR on float64), mask == 1 exactly."""
    cv2 = pytest.importorskip("cv2")
    root, img, norm = nyu_like
    item = NormalsDataset(root, "train", size=OUT)[0]
    image = cv2.resize(img / 255.0, OUT[::-1], interpolation=cv2.INTER_LINEAR) * 2 - 1
    normal = cv2.resize(norm / 255.0, OUT[::-1], interpolation=cv2.INTER_LINEAR) * 2 - 1
    mask = cv2.resize(norm.any(-1).astype(np.float64), OUT[::-1], interpolation=cv2.INTER_LINEAR) == 1
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), image, atol=1e-6)
    np.testing.assert_array_equal(item["mask"][0].numpy(), mask)
    np.testing.assert_allclose(item["normal"].permute(1, 2, 0).numpy()[mask], normal[mask], atol=1e-6)


def test_image_processor_imports_first():
    # dataset.py uses the image processor's resize; either module may be imported first.
    import subprocess
    import sys

    code = "import diff2in1.inference.image_processor, diff2in1.data.dataset"
    subprocess.run([sys.executable, "-c", code], check=True)
