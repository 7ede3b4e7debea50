"""Losses: hand-computed values, masking, the 4-output sum, and that training lowers the loss."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from diff2in1.heads import HeadConfig, HeadOutput, NormalHead
from diff2in1.heads.decoder import indices_to_coords
from diff2in1.losses import angular_loss, head_loss, l2_loss, ug_angular_nll


def nll(kappa: float, angle: float) -> float:
    return -math.log(kappa**2 + 1) + kappa * angle + math.log(1 + math.exp(-kappa * math.pi))


def unit(*v: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def as_map(vectors: list[list[float]]) -> torch.Tensor:
    """list of P vectors -> (1, C, 1, P)."""
    return torch.tensor(vectors, dtype=torch.float64).T[None, :, None, :]


def test_ug_nll_matches_hand_computation_and_ignores_masked_pixels():
    gt = [[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1]]
    pred = [
        unit(0, 1, 1),  # 45 degrees
        unit(0, 1, 0),  # 90 degrees
        unit(0, 0, -1),  # 180 degrees: cos = -1 -> not counted
        unit(0, 0, 1),  # 0 degrees: cos = 1 -> not counted
        unit(1, 0, 0),  # 90 degrees but masked out
    ]
    kappa = [[2.0], [0.5], [3.0], [4.0], [7.0]]
    mask = as_map([[1], [1], [1], [1], [0]]).bool()
    got = ug_angular_nll(as_map(pred), as_map(kappa), as_map(gt), mask)
    want = (nll(2.0, math.pi / 4) + nll(0.5, math.pi / 2)) / 2
    assert got.item() == pytest.approx(want, rel=1e-9)
    assert angular_loss(as_map(pred), as_map(gt), mask).item() == pytest.approx(3 * math.pi / 8, rel=1e-9)
    # l2 counts every valid pixel: |p - g|^2 = 2 - 2 cos
    want_l2 = (2 - 2 * math.cos(math.pi / 4) + 2 + 4 + 0) / 4
    assert l2_loss(as_map(pred), as_map(gt), mask).item() == pytest.approx(want_l2, rel=1e-9)


def test_loss_uses_cosine_so_unnormalised_prediction_counts_by_direction():
    gt = as_map([[0, 0, 1]])
    pred = as_map([[0, 0.3, 0.3]])  # 45 degrees, length 0.42
    got = ug_angular_nll(pred, as_map([[2.0]]), gt, torch.ones(1, 1, 1, 1, dtype=torch.bool))
    assert got.item() == pytest.approx(nll(2.0, math.pi / 4), rel=1e-9)


def test_no_valid_pixel_gives_zero_with_gradient():
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    kappa = torch.rand(1, 1, 2, 2, requires_grad=True)
    loss = ug_angular_nll(pred, kappa, torch.randn(1, 3, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_head_loss_sums_coarse_and_point_terms():
    torch.manual_seed(0)
    h, w = 16, 16
    gt = F.normalize(torch.randn(2, 3, h, w), dim=1)
    mask = torch.rand(2, 1, h, w) > 0.2
    coarse = torch.cat([F.normalize(torch.randn(2, 3, 2, 2), dim=1), torch.rand(2, 1, 2, 2) + 0.5], 1)
    point_preds, point_coords, want = [], [], 0.0
    up = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    want += ug_angular_nll(up[:, :3], up[:, 3:], gt, mask).item()
    for s in (4, 8, 16):
        idx = torch.stack([torch.randperm(s * s)[:10] for _ in range(2)])
        coords = indices_to_coords(idx, s, s)
        pts = torch.cat([F.normalize(torch.randn(2, 3, 10), dim=1), torch.rand(2, 1, 10) + 0.5], 1)
        # ground truth by nearest sampling = the pixel at the rounded full-res position
        rows = torch.div(idx, s, rounding_mode="floor") * (h - 1) / (s - 1)
        cols = (idx % s) * (w - 1) / (s - 1)
        flat = (torch.round(rows) * w + torch.round(cols)).long()
        gt_pts = gt.flatten(2).gather(2, flat[:, None].expand(-1, 3, -1))
        m_pts = mask.flatten(2).gather(2, flat[:, None])
        want += ug_angular_nll(
            pts[:, :3, None], pts[:, 3:, None], gt_pts[:, :, None], m_pts[:, :, None]
        ).item()
        point_preds.append(pts)
        point_coords.append(coords)
    dummy = torch.zeros(2, 3, h, w)
    out = HeadOutput(dummy, dummy[:, :1], coarse, point_preds, point_coords)
    assert head_loss(out, gt, mask).item() == pytest.approx(want, rel=1e-5)
    assert head_loss(out, gt, mask[:, 0]).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss kind"):
        head_loss(out, gt, mask, kind="nope")


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    cin = (12, 10, 8, 6)
    head = NormalHead.from_head_config(HeadConfig.small(cin, width=8)).train()
    feats = SimpleNamespace(
        low=torch.randn(2, cin[0], 1, 1),
        mid=torch.randn(2, cin[1], 2, 2),
        high=torch.randn(2, cin[2], 4, 4),
        highest=torch.randn(2, cin[3], 8, 8),
    )
    gt = F.normalize(torch.randn(2, 3, 64, 64) * 0.2 + torch.tensor([0.0, 0.0, 1.0])[:, None, None], dim=1)
    mask = torch.ones(2, 1, 64, 64, dtype=torch.bool)
    mask[:, :, :8] = False
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)

    def loss_at_fixed_points(step: bool) -> float:
        torch.manual_seed(123)  # the same random points every call
        loss = head_loss(head(feats, gt_mask=mask), gt, mask)
        if step:
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    first = loss_at_fixed_points(step=True)
    for _ in range(4):
        loss_at_fixed_points(step=True)
    assert loss_at_fixed_points(step=False) < first - 0.1
