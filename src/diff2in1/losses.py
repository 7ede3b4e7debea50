"""Losses for the normal head (docs/method.md section 4). Pure functions.

cos is the cosine similarity of prediction and ground truth (both normalised, as the research loss
computes it; the same as the inner product for unit vectors). A pixel counts when its mask is set
and -0.999 < cos < 0.999 (acos has infinite slope at +-1). Each loss is the mean over counted
pixels; with none, it is an exact zero that still depends on the inputs (so backward works).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .heads.normal_head import HeadOutput

LOSS_KINDS = ("ug_nll", "angular", "l2")


def _valid_cos(pred_normal: Tensor, gt: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """cos (B, ...) and the counted-pixel mask (B, ...) for channel-first inputs.

    Uncounted pixels get cos = 0 so acos stays finite there (its gradient is then masked to zero
    instead of turning into NaN).
    """
    cos = F.cosine_similarity(pred_normal, gt, dim=1)
    c = cos.detach()
    valid = mask[:, 0].bool() & (c < 0.999) & (c > -0.999)
    return cos.masked_fill(~valid, 0.0), valid


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of values over valid; 0 (still in the graph) when nothing is valid. No host sync.

    Under data-parallel training (a process group of N > 1), this process's sum is divided by
    the count over all processes and scaled by N: DDP's gradient average then gives exactly the
    mean over every valid pixel of the global batch, whatever each process's share of valid
    pixels (a plain per-process mean would weight processes, not pixels).
    """
    v = valid.to(values.dtype)
    count = v.sum()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        count = count.detach().clone()
        dist.all_reduce(count)
        return (values * v).sum() * world / count.clamp(min=1.0)
    return (values * v).sum() / count.clamp(min=1.0)


def ug_angular_nll(pred_normal: Tensor, pred_kappa: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Angular vMF NLL, mean over counted pixels.

    pred_normal (B, 3, ...), pred_kappa (B, 1, ...) > 0, gt (B, 3, ...), mask (B, 1, ...) bool
    (True = valid ground truth) -> scalar.
    L = -log(kappa^2 + 1) + kappa * acos(cos) + log(1 + exp(-kappa * pi)).
    """
    cos, valid = _valid_cos(pred_normal, gt, mask)
    kappa = pred_kappa[:, 0]
    nll = -torch.log(kappa.square() + 1) + kappa * torch.acos(cos) + torch.log1p(torch.exp(-kappa * math.pi))
    return _masked_mean(nll, valid)


def angular_loss(pred_normal: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Mean acos(cos) in radians over counted pixels. Shapes as `ug_angular_nll`."""
    cos, valid = _valid_cos(pred_normal, gt, mask)
    return _masked_mean(torch.acos(cos), valid)


def l2_loss(pred_normal: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid pixels of ||pred - gt||^2 (sum over the 3 channels). Shapes as `ug_angular_nll`."""
    sq = (pred_normal - gt).square().sum(1)
    return _masked_mean(sq, mask[:, 0].bool())


def pixel_loss(pred: Tensor, gt: Tensor, mask: Tensor, kind: str = "ug_nll") -> Tensor:
    """One term: pred (B, 4, ...) [xyz, kappa], gt (B, 3, ...), mask (B, 1, ...) -> scalar."""
    if kind == "ug_nll":
        return ug_angular_nll(pred[:, :3], pred[:, 3:4], gt, mask)
    if kind == "angular":
        return angular_loss(pred[:, :3], gt, mask)
    if kind == "l2":
        return l2_loss(pred[:, :3], gt, mask)
    raise ValueError(f"unknown loss kind {kind!r}; choose one of {LOSS_KINDS}")


def head_loss(output: HeadOutput, gt_normal: Tensor, gt_mask: Tensor, kind: str = "ug_nll") -> Tensor:
    """Sum of the per-output means (docs/method.md section 4).

    gt_normal (B, 3, H, W), gt_mask (B, 1, H, W) or (B, H, W), True = valid.
    Training output: the 1/8 output upsampled (bilinear, align_corners True) to the ground-truth size
    over every pixel, plus each refinement scale at its sampled points, with the ground truth and
    mask read there by nearest sampling (align_corners True).
    Eval output (no points): the 1/8 term plus the full-resolution prediction resized to the ground
    truth size; useful as a validation loss.
    """
    if gt_mask.dim() == 3:
        gt_mask = gt_mask.unsqueeze(1)
    size = gt_normal.shape[-2:]
    if output.coarse is None:
        raise ValueError("head_loss needs HeadOutput.coarse (the 1/8 output)")
    coarse = F.interpolate(output.coarse, size=size, mode="bilinear", align_corners=True)
    total = pixel_loss(coarse, gt_normal, gt_mask, kind)
    if output.point_preds:
        gt_mask_f = gt_mask.to(gt_normal.dtype)
        for pts, coords in zip(output.point_preds, output.point_coords, strict=True):
            grid = coords.unsqueeze(1).to(gt_normal.dtype)  # (B, 1, N, 2)
            gt_pts = F.grid_sample(gt_normal, grid, mode="nearest", align_corners=True)[:, :, 0]  # (B, 3, N)
            m_pts = F.grid_sample(gt_mask_f, grid, mode="nearest", align_corners=True)[:, :, 0] > 0.5
            total = total + pixel_loss(pts, gt_pts, m_pts, kind)
    else:
        full = torch.cat([output.normal, output.kappa], 1)
        if full.shape[-2:] != size:
            full = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        total = total + pixel_loss(full, gt_normal, gt_mask, kind)
    return total
