"""Metrics: known angles, thresholds, exact pooling over a test set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diff2in1.metrics import MetricAccumulator, angular_error_deg, normal_metrics


def const_map(v, h=4, w=5) -> np.ndarray:
    return np.broadcast_to(np.asarray(v, dtype=np.float32)[:, None, None], (3, h, w)).copy()


def test_constant_ninety_degrees():
    err = angular_error_deg(const_map([1, 0, 0]), const_map([0, 1, 0]))
    assert err.shape == (4, 5)
    m = normal_metrics(err)
    assert m["mean"] == pytest.approx(90.0, abs=1e-9)
    assert m["median"] == pytest.approx(90.0, abs=1e-9)
    assert m["rmse"] == pytest.approx(90.0, abs=1e-9)
    assert m["a11"] == m["a22"] == m["a30"] == 0.0


def test_identical_is_zero_and_all_under_thresholds():
    n = np.random.default_rng(0).normal(size=(2, 3, 6, 7))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    m = normal_metrics(angular_error_deg(n, n))
    assert m["mean"] == pytest.approx(0.0, abs=1e-5) and m["median"] == pytest.approx(0.0, abs=1e-5)
    assert m["a11"] == m["a22"] == m["a30"] == 100.0


def test_exact_pi_and_torch_numpy_agree():
    pred = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    gt = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    e_np = angular_error_deg(pred, gt, dim=-1)
    e_t = angular_error_deg(torch.from_numpy(pred).float(), torch.from_numpy(gt).float(), dim=-1)
    assert isinstance(e_t, torch.Tensor)
    assert np.allclose(e_np, [45.0, 45.0, 180.0], atol=1e-12)
    assert np.allclose(e_t.numpy(), e_np, atol=1e-4)


def test_thresholds_are_strict_and_median_exact():
    m = normal_metrics(np.array([5.0, 11.25, 20.0, 30.0]))
    assert m["a11"] == 25.0 and m["a22"] == 75.0 and m["a30"] == 75.0  # 11.25 and 30 excluded
    assert m["median"] == 15.625  # mean of the two middle values
    assert m["rmse"] == pytest.approx(np.sqrt((25 + 11.25**2 + 400 + 900) / 4))


def test_pooling_is_over_pixels_not_mean_of_means():
    rng = np.random.default_rng(0)
    preds = [rng.normal(size=(1, 3, 8, 8)) for _ in range(2)]
    gts = [rng.normal(size=(1, 3, 8, 8)) for _ in range(2)]
    masks = [np.ones((1, 1, 8, 8), bool), np.zeros((1, 1, 8, 8), bool)]
    masks[1][..., :2, :3] = True  # second image: only 6 valid pixels
    acc = MetricAccumulator()
    per_image = []
    for p, g, m in zip(preds, gts, masks, strict=True):
        per_image.append(normal_metrics(acc.update(p, g, m)))
    assert len(acc) == 64 + 6
    errs = np.concatenate(
        [angular_error_deg(p, g)[m[:, 0]] for p, g, m in zip(preds, gts, masks, strict=True)]
    )
    want = normal_metrics(errs)
    got = acc.compute()
    for k in ("mean", "median", "rmse", "a11", "a22", "a30"):
        assert got[k] == pytest.approx(want[k], rel=1e-6), k
    assert got["mean"] != pytest.approx(np.mean([r["mean"] for r in per_image]), rel=1e-3)


def test_merge_states_equals_single_process():
    rng = np.random.default_rng(1)
    preds = torch.from_numpy(rng.normal(size=(4, 3, 5, 5)))
    gts = torch.from_numpy(rng.normal(size=(4, 3, 5, 5)))
    masks = torch.from_numpy(rng.random((4, 5, 5)) > 0.3)
    single = MetricAccumulator()
    single.update(preds, gts, masks)
    ranks = [MetricAccumulator(), MetricAccumulator()]
    ranks[0].update(preds[:3], gts[:3], masks[:3])
    ranks[1].update(preds[3:], gts[3:], masks[3:])
    merged = MetricAccumulator.from_states([r.state() for r in ranks])
    assert merged.state().dtype == np.float32
    assert merged.compute() == single.compute()
    with pytest.raises(ValueError):
        MetricAccumulator().compute()


def test_calibration_gap_is_zero_when_the_predicted_error_is_the_observed_one():
    from diff2in1.metrics import CalibrationAccumulator

    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 60, 10000)
    acc = CalibrationAccumulator()
    acc.add(pred, pred)
    assert acc.compute()["gap"] == pytest.approx(0, abs=1e-9)
    over = CalibrationAccumulator()
    over.add(pred, pred * 2)  # twice as wrong as it claims
    c = over.compute()
    assert c["gap"] == pytest.approx(pred.mean(), rel=1e-9) and c["mean_observed"] > c["mean_predicted"]
    halves = CalibrationAccumulator()
    halves.add(pred[:5000], pred[:5000] * 2)
    other = CalibrationAccumulator()
    other.add(pred[5000:], pred[5000:] * 2)
    merged = halves.merge(other.state()).compute()  # processes pool (up to float summation order)
    assert merged["gap"] == pytest.approx(c["gap"], rel=1e-12)
    assert [b["pixels"] for b in merged["bins"]] == [b["pixels"] for b in c["bins"]]
    assert sum(b["pixels"] for b in c["bins"]) == pred.size
