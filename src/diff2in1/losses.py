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


def _weighted(values: Tensor, weight: Tensor | None) -> Tensor:
    """values (B, ...) times a per-pixel weight (B, 1, ...); None leaves them as they are."""
    return values if weight is None else values * weight[:, 0].to(values.dtype)


def ug_angular_nll(
    pred_normal: Tensor, pred_kappa: Tensor, gt: Tensor, mask: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Angular vMF NLL, mean over counted pixels.

    pred_normal (B, 3, ...), pred_kappa (B, 1, ...) > 0, gt (B, 3, ...), mask (B, 1, ...) bool
    (True = valid ground truth) -> scalar. weight (B, 1, ...): optional per-pixel factor of each
    term (the mean still divides by the counted pixels; see `diff2in1.pseudo_labels`).
    L = -log(kappa^2 + 1) + kappa * acos(cos) + log(1 + exp(-kappa * pi)).
    """
    cos, valid = _valid_cos(pred_normal, gt, mask)
    kappa = pred_kappa[:, 0]
    nll = -torch.log(kappa.square() + 1) + kappa * torch.acos(cos) + torch.log1p(torch.exp(-kappa * math.pi))
    return _masked_mean(_weighted(nll, weight), valid)


def angular_loss(pred_normal: Tensor, gt: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean acos(cos) in radians over counted pixels. Shapes as `ug_angular_nll`."""
    cos, valid = _valid_cos(pred_normal, gt, mask)
    return _masked_mean(_weighted(torch.acos(cos), weight), valid)


def l2_loss(pred_normal: Tensor, gt: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean over valid pixels of ||pred - gt||^2 (sum over the 3 channels). Shapes as `ug_angular_nll`."""
    sq = (pred_normal - gt).square().sum(1)
    return _masked_mean(_weighted(sq, weight), mask[:, 0].bool())


def pixel_loss(
    pred: Tensor, gt: Tensor, mask: Tensor, kind: str = "ug_nll", weight: Tensor | None = None
) -> Tensor:
    """One term: pred (B, 4, ...) [xyz, kappa], gt (B, 3, ...), mask (B, 1, ...) -> scalar."""
    if kind == "ug_nll":
        return ug_angular_nll(pred[:, :3], pred[:, 3:4], gt, mask, weight)
    if kind == "angular":
        return angular_loss(pred[:, :3], gt, mask, weight)
    if kind == "l2":
        return l2_loss(pred[:, :3], gt, mask, weight)
    raise ValueError(f"unknown loss kind {kind!r}; choose one of {LOSS_KINDS}")


def head_loss(
    output: HeadOutput,
    gt_normal: Tensor,
    gt_mask: Tensor,
    kind: str = "ug_nll",
    weight: Tensor | None = None,
) -> Tensor:
    """Sum of the per-output means (docs/method.md section 4).

    gt_normal (B, 3, H, W), gt_mask (B, 1, H, W) or (B, H, W), True = valid.
    Training output: the 1/8 output upsampled (bilinear, align_corners True) to the ground-truth size
    over every pixel, plus each refinement scale at its sampled points, with the ground truth and
    mask read there by nearest sampling (align_corners True).
    Eval output (no points): the 1/8 term plus the full-resolution prediction resized to the ground
    truth size; useful as a validation loss.
    weight (B, 1, H, W): optional per-pixel factor of every term, read at the points like the mask
    (None: the research loss, unchanged).
    """
    if gt_mask.dim() == 3:
        gt_mask = gt_mask.unsqueeze(1)
    size = gt_normal.shape[-2:]
    if output.coarse is None:
        raise ValueError("head_loss needs HeadOutput.coarse (the 1/8 output)")
    coarse = F.interpolate(output.coarse, size=size, mode="bilinear", align_corners=True)
    total = pixel_loss(coarse, gt_normal, gt_mask, kind, weight)
    if output.point_preds:
        gt_mask_f = gt_mask.to(gt_normal.dtype)
        for pts, coords in zip(output.point_preds, output.point_coords, strict=True):
            grid = coords.unsqueeze(1).to(gt_normal.dtype)  # (B, 1, N, 2)
            gt_pts = F.grid_sample(gt_normal, grid, mode="nearest", align_corners=True)[:, :, 0]  # (B, 3, N)
            m_pts = F.grid_sample(gt_mask_f, grid, mode="nearest", align_corners=True)[:, :, 0] > 0.5
            w_pts = None
            if weight is not None:
                w = weight.to(gt_normal.dtype)
                w_pts = F.grid_sample(w, grid, mode="nearest", align_corners=True)[:, :, 0]  # (B, 1, N)
            total = total + pixel_loss(pts, gt_pts, m_pts, kind, w_pts)
    else:
        full = torch.cat([output.normal, output.kappa], 1)
        if full.shape[-2:] != size:
            full = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        total = total + pixel_loss(full, gt_normal, gt_mask, kind, weight)
    return total


# ---------------------------------------------------------------------------- depth and segmentation
# Pure functions for the depth and segmentation tasks (docs/method.md, "Depth and segmentation
# losses"). `present` (B,) bool marks the samples that carry the task's label at all: a sample
# without it adds nothing (its loss is masked), as does every pixel without a label.

DEPTH_LOSS_KINDS = ("laplace_nll", "gaussian_nll", "silog")


def _with_present(valid: Tensor, present: Tensor | None) -> Tensor:
    if present is None:
        return valid
    return valid & present.to(valid.device).bool().view(-1, *([1] * (valid.dim() - 1)))


def depth_valid(gt_depth: Tensor, mask: Tensor | None = None, present: Tensor | None = None) -> Tensor:
    """(B, H, W) bool: finite ground truth > 0, the mask (B, [1,] H, W) where given, and `present`."""
    gt = gt_depth[:, 0] if gt_depth.dim() == 4 else gt_depth
    valid = torch.isfinite(gt) & (gt > 0)
    if mask is not None:
        valid &= (mask[:, 0] if mask.dim() == 4 else mask).bool()
    return _with_present(valid, present)


def depth_nll(
    pred_log_depth: Tensor,
    pred_log_scale: Tensor,
    gt_depth: Tensor,
    mask: Tensor | None = None,
    present: Tensor | None = None,
    kind: str = "laplace_nll",
) -> Tensor:
    """Negative log-likelihood of log ground-truth depth, mean over valid pixels.

    pred_log_depth mu and pred_log_scale s: (B, 1, H, W) (or (B, H, W)); gt_depth in metres, same
    size, 0 = no depth. With r = ln(gt) - mu and b = exp(s) (the per-pixel uncertainty, in log-depth
    units, i.e. a relative error): "laplace_nll" = |r| / b + s + ln 2; "gaussian_nll" =
    r^2 / (2 b^2) + s + ln(2 pi) / 2. Constants are kept so the value is a true NLL.
    """
    valid = depth_valid(gt_depth, mask, present)
    mu = pred_log_depth[:, 0] if pred_log_depth.dim() == 4 else pred_log_depth
    s = pred_log_scale[:, 0] if pred_log_scale.dim() == 4 else pred_log_scale
    gt = gt_depth[:, 0] if gt_depth.dim() == 4 else gt_depth
    r = torch.log(torch.where(valid, gt, torch.ones_like(gt))) - mu  # 1 m where invalid: finite, masked
    if kind == "laplace_nll":
        nll = r.abs() * torch.exp(-s) + s + math.log(2.0)
    elif kind == "gaussian_nll":
        nll = 0.5 * r.square() * torch.exp(-2.0 * s) + s + 0.5 * math.log(2.0 * math.pi)
    else:
        raise ValueError(f"unknown depth NLL kind {kind!r}; choose laplace_nll or gaussian_nll")
    return _masked_mean(nll, valid)


def silog_loss(
    pred_depth: Tensor,
    gt_depth: Tensor,
    mask: Tensor | None = None,
    present: Tensor | None = None,
    variance_focus: float = 0.85,
) -> Tensor:
    """Scale-invariant log loss (Eigen et al. 2014, as BTS / VPD train), per image then averaged:
    10 * sqrt(mean(g^2) - lambda * mean(g)^2) with g = ln(pred) - ln(gt) over valid pixels.
    An alternative to `depth_nll` (no uncertainty); images without a valid pixel add nothing."""
    valid = depth_valid(gt_depth, mask, present)
    pred = pred_depth[:, 0] if pred_depth.dim() == 4 else pred_depth
    gt = gt_depth[:, 0] if gt_depth.dim() == 4 else gt_depth
    one = torch.ones_like(gt)
    g = torch.log(torch.where(valid, pred.clamp(min=1e-6), one)) - torch.log(torch.where(valid, gt, one))
    v = valid.to(g.dtype).flatten(1)
    n = v.sum(1)
    g = g.flatten(1) * v
    m1, m2 = g.sum(1) / n.clamp(min=1), g.square().sum(1) / n.clamp(min=1)
    per_image = 10.0 * torch.sqrt((m2 - variance_focus * m1.square()).clamp(min=1e-12))
    has = n > 0
    return (per_image * has).sum() / has.sum().clamp(min=1)


def segmentation_ce(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    present: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """Cross-entropy of class logits (B, C, H, W) against class ids (B, H, W) (or (B, 1, H, W)),
    mean over labelled pixels (target != ignore_index, sample `present`).

    weight: optional per-pixel weight (B, H, W) >= 0 multiplying each pixel's term (e.g. a
    confidence); the mean still divides by the number of labelled pixels, so all-ones weights give
    exactly the plain cross-entropy.
    """
    if target.dim() == 4:
        target = target[:, 0]
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"logits {tuple(logits.shape[-2:])} and target {tuple(target.shape[-2:])} differ in size"
        )
    target = target.long()
    valid = _with_present(target != ignore_index, present)
    safe = torch.where(valid, target, torch.zeros_like(target))
    if (safe >= logits.shape[1]).any() or (safe < 0).any():
        raise ValueError(f"class id outside 0..{logits.shape[1] - 1} in the target")
    ce = F.cross_entropy(logits, safe, reduction="none")
    if weight is not None:
        ce = ce * (weight[:, 0] if weight.dim() == 4 else weight).to(ce.dtype)
    return _masked_mean(ce, valid)
