"""Depth and segmentation losses: hand-computed values, label masks, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diff2in1.losses import depth_nll, segmentation_ce, silog_loss


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_laplace_and_gaussian_nll_hand_computed_and_masked():
    gt = t([[[2.0, 0.0, 1.0]]])  # (1, 1, 3): the middle pixel has no depth
    mu = t([[[math.log(2.0) + 0.5, 9.0, 0.0]]])  # residuals -0.5, (masked), 0
    s = t([[[0.0, 5.0, math.log(0.5)]]])
    want_l = ((0.5 / 1 + 0 + math.log(2)) + (0 + math.log(0.5) + math.log(2))) / 2
    assert depth_nll(mu, s, gt).item() == pytest.approx(want_l)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    want_g = ((0.125 + 0 + half_log_2pi) + (0 + math.log(0.5) + half_log_2pi)) / 2
    assert depth_nll(mu, s, gt, kind="gaussian_nll").item() == pytest.approx(want_g)
    # A mask and a missing label (present False) remove pixels / whole samples.
    mask = torch.tensor([[[True, True, False]]])
    assert depth_nll(mu, s, gt, mask=mask).item() == pytest.approx(0.5 + math.log(2))
    two = depth_nll(mu.repeat(2, 1, 1), s.repeat(2, 1, 1), torch.cat([gt, t([[[7.0, 7.0, 7.0]]])]),
                    present=torch.tensor([True, False]))  # fmt: skip
    assert two.item() == pytest.approx(want_l)
    with pytest.raises(ValueError, match="unknown"):
        depth_nll(mu, s, gt, kind="l1")


def test_depth_nll_is_lowest_at_the_median_log_depth_and_mean_abs_residual():
    """The Laplace NLL's minimum over constant (mu, s): mu = median ln(gt), b = mean |ln gt - mu|:
    the uncertainty it learns is the expected relative error."""
    logs = t([0.0, 0.2, 0.4, 1.0, 1.1])
    gt = torch.exp(logs)[None, None]
    best_mu, best_b = 0.4, float((logs - 0.4).abs().mean())

    def loss(mu: float, b: float) -> float:
        return depth_nll(torch.full((1, 1, 5), mu), torch.full((1, 1, 5), math.log(b)), gt).item()

    at_best = loss(best_mu, best_b)
    for d_mu, f_b in ((0.05, 1.0), (-0.05, 1.0), (0.0, 1.2), (0.0, 0.8), (0.03, 1.1)):
        assert loss(best_mu + d_mu, best_b * f_b) > at_best


def test_no_valid_pixel_is_an_exact_zero_with_gradient():
    mu = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = depth_nll(mu, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert mu.grad is not None and (mu.grad == 0).all()


def test_silog_matches_its_definition_per_image():
    pred = t([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]])
    gt = t([[[1.5, 2.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # the second image has no depth
    g = torch.log(t([1.0, 2.0, 3.0])) - torch.log(t([1.5, 2.0, 2.0]))
    want = 10 * math.sqrt(g.square().mean() - 0.85 * g.mean() ** 2)
    assert silog_loss(pred, gt).item() == pytest.approx(want)
    assert silog_loss(pred * 2, gt * 2).item() == pytest.approx(want)  # scale in both: unchanged


def test_segmentation_ce_equals_torch_with_ignore_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (2, 4, 6))
    target[0, 0] = 255
    ref = F.cross_entropy(logits, target, ignore_index=255)
    assert segmentation_ce(logits, target).item() == pytest.approx(ref.item(), rel=1e-12)
    assert segmentation_ce(logits, target, weight=torch.ones(2, 4, 6)).item() == pytest.approx(ref.item())
    # Weights scale each pixel's term; the mean still divides by the labelled-pixel count.
    w = torch.zeros(2, 4, 6, dtype=torch.float64)
    w[1] = 1.0
    per_px = F.cross_entropy(logits, target.clamp(max=4), reduction="none")
    n = (target != 255).sum()
    assert segmentation_ce(logits, target, weight=w).item() == pytest.approx((per_px[1].sum() / n).item())
    # A sample without a class map (present False) is left out.
    only1 = F.cross_entropy(logits[1:], target[1:])
    got = segmentation_ce(logits, target, present=torch.tensor([False, True]))
    assert got.item() == pytest.approx(only1.item())
    got.backward()
    assert (logits.grad[0] == 0).all() and logits.grad[1].abs().sum() > 0
    with pytest.raises(ValueError, match="class id"):
        segmentation_ce(logits, torch.full((2, 4, 6), 7))
    with pytest.raises(ValueError, match="differ in size"):
        segmentation_ce(logits, target[:, :2])
