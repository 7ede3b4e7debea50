"""Depth metrics (hand-worked cases) and segmentation metrics (cross-checked with torchmetrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diff2in1.metrics import (
    DEPTH_KEYS,
    DepthAccumulator,
    SegmentationAccumulator,
    depth_metrics,
    eigen_crop_mask,
    segmentation_metrics,
)

GT = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0 = no depth
PRED = np.array([[1.25, 1.0], [4.0, 7.0]])


def test_depth_metrics_hand_worked():
    m = depth_metrics(PRED, GT)
    assert tuple(m) == DEPTH_KEYS
    # valid pixels (d, g): (1.25, 1), (1, 2), (4, 4)
    assert m["abs_rel"] == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert m["sq_rel"] == pytest.approx((0.0625 + 0.5 + 0) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0.0625 + 1 + 0) / 3))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(1.25) ** 2 + math.log(2) ** 2) / 3))
    assert m["log10"] == pytest.approx((math.log10(1.25) + math.log10(2)) / 3)
    # ratios 1.25, 2, 1: "< 1.25" is strict, 2 > 1.25^3 = 1.953
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))


def test_depth_metrics_validity_mask_cap_clip_and_tensors():
    gt = np.array([[1.0, 2.0, 12.0, np.nan]])
    pred = np.array([[0.0, 2.0, 12.0, 1.0]])
    m = depth_metrics(torch.tensor(pred), torch.tensor(gt), max_depth=10.0)  # 12 m and NaN gt left out
    # pred 0 is clipped to 1e-3: abs_rel = (|0.001 - 1| / 1 + 0) / 2
    assert m["abs_rel"] == pytest.approx(0.999 / 2)
    assert m["delta1"] == pytest.approx(0.5)
    m = depth_metrics(pred, gt, mask=np.array([[False, True, True, True]]))
    assert m["abs_rel"] == 0.0 and m["delta1"] == 1.0
    assert depth_metrics(PRED, GT, max_depth=3.0)["abs_rel"] == pytest.approx((0.25 + 0.5) / 2)
    with pytest.raises(ValueError, match="no valid depth pixel"):
        depth_metrics(PRED, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="differ"):
        depth_metrics(PRED, np.ones((3, 2)))


def test_eigen_crop_at_480x640_and_scaled():
    m = eigen_crop_mask(480, 640)
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (45, 471, 41, 601)
    assert m.sum() == (471 - 45) * (601 - 41)
    m = eigen_crop_mask(240, 320)
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (23, 236, 21, 301)
    gt = np.ones((480, 640))
    pred = np.ones((480, 640))
    pred[:45] = 5.0  # only outside the crop
    assert depth_metrics(pred, gt, eigen_crop=True)["abs_rel"] == 0.0
    assert depth_metrics(pred, gt)["abs_rel"] > 0


def test_depth_accumulator_averages_images_and_is_exact_split_across_processes():
    rng = np.random.default_rng(0)
    images = [(rng.uniform(0.5, 9, (6, 7)), rng.uniform(0.5, 9, (6, 7))) for _ in range(7)]
    one = DepthAccumulator()
    for i, (p, g) in enumerate(images):
        one.update(p, g, key=i)
    one.update(np.ones((2, 2)), np.zeros((2, 2)), key=99)  # no valid pixel: counted, not averaged
    assert one.n_empty == 1 and len(one) == 7
    per_image = [depth_metrics(p, g) for p, g in images]
    res = one.compute()
    for k in DEPTH_KEYS:
        assert res[k] == pytest.approx(np.mean([m[k] for m in per_image]), rel=1e-12)
    # Two "processes" with interleaved images; gathered states merge to the same numbers exactly.
    ranks = [DepthAccumulator(), DepthAccumulator()]
    for i, (p, g) in enumerate(images):
        ranks[i % 2].update(p, g, key=i)
    merged = DepthAccumulator().merge(ranks[1].state()).merge(ranks[0].state())
    assert merged.compute() == res
    assert DepthAccumulator.from_states([r.state() for r in ranks]).compute() == res


def _torchmetrics():
    return pytest.importorskip("torchmetrics")


def test_segmentation_matches_torchmetrics():
    _torchmetrics()
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassJaccardIndex,
    )

    c = 6
    rng = np.random.default_rng(1)
    gt = rng.integers(0, c - 1, (4, 20, 24))  # class 5 never in gt ...
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, np.where(gt == 255, 0, gt), rng.integers(0, c - 2, gt.shape))
    # ... and class 4 appears only where the prediction is wrong: present in gt or prediction.
    ours = segmentation_metrics(pred, gt, c)
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)
    cm = MulticlassConfusionMatrix(c, ignore_index=255)(p, g).numpy()
    acc = SegmentationAccumulator(c)
    acc.update(pred, gt)
    np.testing.assert_array_equal(acc.matrix, cm)
    iou = MulticlassJaccardIndex(c, average=None, ignore_index=255)(p, g).numpy()
    present = [i for i, v in enumerate(ours["iou"]) if v is not None]
    assert present == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([ours["iou"][i] for i in present], iou[present], rtol=1e-6)
    assert ours["miou"] == pytest.approx(float(iou[present].mean()), rel=1e-6)
    pix = MulticlassAccuracy(c, average="micro", ignore_index=255)(p, g).item()
    assert ours["pixel_acc"] == pytest.approx(pix, rel=1e-6)


def test_segmentation_hand_worked_and_pooled_across_processes():
    gt = np.array([[0, 0, 1, 255], [2, 2, 2, 1]])
    pred = np.array([[0, 1, 1, 2], [2, 2, 0, 1]])
    m = segmentation_metrics(pred, gt, num_classes=4)
    # class 0: tp 1, fp 1 (pred 0 on gt 2), fn 1 -> 1/3; class 1: tp 2, fp 1, fn 0 -> 2/3;
    # class 2: tp 2, fp 0 (the 2 on ignore does not count), fn 1 -> 2/3; class 3 absent.
    assert m["iou"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, None])
    assert m["miou"] == pytest.approx(5 / 9) and m["pixel_acc"] == pytest.approx(5 / 7)
    a, b = SegmentationAccumulator(4), SegmentationAccumulator(4)
    a.update(pred[:1], gt[:1])
    b.update(pred[1:], gt[1:])
    assert SegmentationAccumulator.from_states([a.state(), b.state()]).compute() == m
    assert a.merge(b.state()).compute() == m
    with pytest.raises(ValueError, match="class id 7"):
        segmentation_metrics(np.array([[7]]), np.array([[0]]), 4)
