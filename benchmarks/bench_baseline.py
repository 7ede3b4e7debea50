"""The SLOW REFERENCE for `bench.py` only: a straightforward fp32 implementation of docs/method.md
sections 2-4 that makes the research code's choices. No stage uses it; it exists so the benchmark
can measure, in the same run, how much faster the package's own implementation is, and so a test
can check that both compute the same thing.

It shares every parameter and buffer with a `NormalHead` (it wraps it), so with the same seeds it
must give the same outputs as the head, within float rounding. What it does differently, on purpose:

- perception: the empty caption is re-embedded by the CLIP text encoder on every call (the package
  embeds it once and caches it); always fp32, no autocast.
- fusion: every tap map is resized on its own to the next group's size and the maps are concatenated
  BEFORE the bias-free 1x1 projection (the package projects first: the same linear maps, commuted,
  on 4x fewer pixels, and the big resized tap tensors are never built).
- decoder, training refinement: the 2x upsampled feature map is materialised and read at the
  sampled points; the refined points are written back with a Python loop over the batch
  (in-place indexing), instead of reading the low-resolution map directly and one batched scatter.
- loss: boolean-mask indexing of the valid pixels (a host sync per term) instead of masked sums.

The point selection itself (`sample_point_indices`) is shared, so both draw the same points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff2in1.backbone import Backbone
from diff2in1.heads.decoder import indices_to_coords, norm_normalize, sample_point_indices, up2
from diff2in1.heads.fusion import FeatureGroups, resize
from diff2in1.heads.normal_head import HeadOutput, NormalHead
from diff2in1.taps import GROUPS, TapFeatures
from diff2in1.training.loop import mix_seed


def tap_splits(backbone: Backbone) -> dict[str, list[int]]:
    """Channels of each tap map, per group, in tap order (how a group tensor splits into its maps)."""
    return {g: [t.channels for t in backbone.taps.layout if t.group == g] for g in GROUPS}


@torch.no_grad()
def baseline_perceive(backbone: Backbone, images: Tensor, seeds: list[int]) -> TapFeatures:
    """docs/method.md section 2 features as `Backbone.perceive(images, seeds=seeds)` computes them
    (same draws), but fp32 and re-embedding the empty caption on every call."""
    dev = backbone.device
    images = images.to(dev, torch.float32)
    cond = backbone.embed([""] * images.shape[0])
    posterior = backbone.vae.encode(images).latent_dist
    mean, std = posterior.mean, posterior.std
    draws = torch.stack(
        [torch.randn((2, *mean.shape[1:]), generator=torch.Generator().manual_seed(int(s))) for s in seeds],
        dim=1,
    ).to(dev, mean.dtype)
    z = (mean + std * draws[0]) * backbone.scaling_factor
    z0 = backbone.q_sample(z, 0, draws[1])
    t = torch.zeros(images.shape[0], dtype=torch.long, device=dev)
    with backbone.taps.capture() as maps:
        backbone.unet(z0, t, encoder_hidden_states=cond)
    return backbone.taps.collect(maps)


def point_sample(x: Tensor, coords: Tensor) -> Tensor:
    """Bilinear read (align_corners True) of x (B, C, h, w) at coords (B, N, 2) -> (B, C, N)."""
    return F.grid_sample(x, coords.unsqueeze(1).to(x.dtype), mode="bilinear", align_corners=True)[:, :, 0]


class BaselineHead(nn.Module):
    """The research-order forward of a `NormalHead`, with the head's own parameters."""

    def __init__(self, head: NormalHead, splits: dict[str, list[int]]) -> None:
        super().__init__()
        self.head = head
        self.splits = splits
        for g, c in zip(GROUPS, head.widths.in_channels, strict=True):
            if sum(splits[g]) != c:
                raise ValueError(f"tap group {g}: maps {splits[g]} do not add up to the head's {c} channels")

    def _resize_maps(self, group: Tensor, name: str, size) -> Tensor:
        return torch.cat([resize(m, size) for m in group.split(self.splits[name], dim=1)], 1)

    def fuse(self, feats: FeatureGroups) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        fu = self.head.fusion
        mid_size, high_size, top_size = feats.mid.shape[-2:], feats.high.shape[-2:], feats.highest.shape[-2:]
        f4 = fu.low_proj(self._resize_maps(feats.low, "low", mid_size))
        m = fu.mid_proj(self._resize_maps(feats.mid, "mid", high_size))
        f3 = fu.mid_block(torch.cat([resize(f4, high_size), m], 1))
        h = fu.high_proj(self._resize_maps(feats.high, "high", top_size))
        f2 = fu.high_block(torch.cat([resize(f3, top_size), h], 1))
        e = fu.highest_proj(self._resize_maps(feats.highest, "highest", top_size))
        g = fu.highest_block(torch.cat([f2, e], 1))
        g0 = F.relu(fu.bn0(g))
        f1 = fu.bn1(fu.up1(g0))
        F.relu(f1, inplace=True)  # in place, as the research code: the decoder gets the activated f1
        f0 = fu.bn2(fu.up2(torch.cat([f1, resize(g0, f1.shape[-2:])], 1)))
        return f4, f3, f2, f1, f0

    def _refine_points(
        self, mlp: nn.Sequential, feat: Tensor, prev: Tensor, gt_mask: Tensor | None, generators
    ) -> tuple[Tensor, Tensor, Tensor]:
        dec = self.head.decoder
        feat_up = up2(feat)  # materialised, as the research decoder does
        init = up2(prev)
        b, _, h, w = init.shape
        n_points = int(dec.sampling_ratio * h * w)
        n_uncertain = int(dec.importance_ratio * n_points)
        valid = None
        if gt_mask is not None:
            valid = F.interpolate(gt_mask.to(init.dtype), size=(h, w), mode="nearest")[:, 0] > 0.5
        idx = sample_point_indices(init[:, 3].detach(), valid, n_points, n_uncertain, generators)
        coords = indices_to_coords(idx, h, w)
        pts = norm_normalize(mlp(torch.cat([point_sample(feat_up, coords), point_sample(init, coords)], 1)))
        rows = torch.div(idx, w, rounding_mode="floor")
        cols = idx - rows * w
        out = init.clone()
        for i in range(b):  # the research decoder's per-image write-back
            out[i][:, rows[i], cols[i]] = pts[i]
        return out, pts, coords

    def forward(
        self,
        feats: FeatureGroups,
        image_size: tuple[int, int] | None = None,
        gt_mask: Tensor | None = None,
        point_seeds: list[int] | None = None,
    ) -> HeadOutput:
        """As `NormalHead.forward` (same arguments, same outputs)."""
        if gt_mask is not None and gt_mask.dim() == 3:
            gt_mask = gt_mask.unsqueeze(1)
        gens = None
        if point_seeds is not None and self.training:
            gens = [torch.Generator().manual_seed(int(s)) for s in point_seeds]
        dec = self.head.decoder
        f4, f3, f2, f1, f0 = self.fuse(feats)
        d1 = dec.up1(dec.d0(f4), f3)
        d2 = dec.up2(d1, f2)
        d3 = dec.up3(d2, f1)
        d4 = dec.up4(d3, f0)
        coarse = norm_normalize(dec.out8(d2))
        pred, point_preds, point_coords = coarse, [], []
        for mlp, feat in ((dec.refine4, d2), (dec.refine2, d3), (dec.refine1, d4)):
            if self.training:
                pred, pts, coords = self._refine_points(mlp, feat, pred, gt_mask, gens)
                point_preds.append(pts)
                point_coords.append(coords)
            else:
                x = torch.cat([up2(feat), up2(pred)], 1)
                b, c, h, w = x.shape
                pred = norm_normalize(mlp(x.reshape(b, c, h * w))).reshape(b, 4, h, w)
        final, renorm = pred, self.training
        if image_size is not None and tuple(image_size) != tuple(final.shape[-2:]):
            final = F.interpolate(final, size=tuple(image_size), mode="bilinear", align_corners=False)
            renorm = True
        normal, kappa = final[:, :3], final[:, 3:]
        if renorm:
            normal = normal / (torch.linalg.vector_norm(normal, dim=1, keepdim=True) + 1e-10)
        return HeadOutput(normal, kappa, coarse, point_preds, point_coords)


def _nll_term(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """pred (B, 4, ...), gt (B, 3, ...), mask (B, 1, ...) bool: mean vMF angular NLL over the valid pixels."""
    keep = mask[:, 0].bool()
    p = pred.movedim(1, -1)[keep]  # (n, 4)
    g = gt.movedim(1, -1)[keep]
    cos = F.cosine_similarity(p[:, :3], g, dim=1)
    ok = (cos < 0.999) & (cos > -0.999)
    cos, kappa = cos[ok], p[ok][:, 3]
    nll = -torch.log(kappa**2 + 1) + kappa * torch.acos(cos) + torch.log(1 + torch.exp(-kappa * math.pi))
    return nll.mean()


def baseline_loss(out: HeadOutput, gt_normal: Tensor, gt_mask: Tensor) -> Tensor:
    """docs/method.md section 4 (UG_NLL), written the research way with boolean indexing."""
    if gt_mask.dim() == 3:
        gt_mask = gt_mask.unsqueeze(1)
    size = gt_normal.shape[-2:]
    total = _nll_term(
        F.interpolate(out.coarse, size=size, mode="bilinear", align_corners=True), gt_normal, gt_mask
    )
    if out.point_preds:
        for pts, coords in zip(out.point_preds, out.point_coords, strict=True):
            grid = coords.unsqueeze(1)
            gt_pts = F.grid_sample(gt_normal, grid, mode="nearest", align_corners=True)[:, :, 0]
            m_pts = F.grid_sample(gt_mask.float(), grid, mode="nearest", align_corners=True)[:, :, 0] > 0.5
            total = total + _nll_term(pts, gt_pts, m_pts)
    else:
        full = torch.cat([out.normal, out.kappa], 1)
        if full.shape[-2:] != size:
            full = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        total = total + _nll_term(full, gt_normal, gt_mask)
    return total


def baseline_warmup_loss(
    backbone: Backbone, bhead: BaselineHead, batch: dict, seed: int, step: int
) -> Tensor:
    """The warm-up loss of one batch, with the same seeds as `stages.warmup.perception_step`."""
    dev = backbone.device
    images = batch["image"].to(dev)
    normal, mask = batch["normal"].to(dev), batch["mask"].to(dev)
    index = [int(i) for i in batch["index"]]
    feats = baseline_perceive(backbone, images, [mix_seed(seed, step, i) for i in index])
    points = [mix_seed(seed, step, i, 1) for i in index]
    out = bhead.train()(feats, image_size=tuple(images.shape[-2:]), gt_mask=mask, point_seeds=points)
    return baseline_loss(out, normal, mask)


@torch.no_grad()
def baseline_predict(
    backbone: Backbone, bhead: BaselineHead, images: Tensor, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(normal, kappa) as `NormalPredictor(backbone, head, seed=seed)(images)` gives them, for images
    already at the model resolution: every image draws its noise from `seed` itself."""
    seeds = [seed] * images.shape[0]
    feats = baseline_perceive(backbone, images, seeds)
    out = bhead.eval()(feats, image_size=tuple(images.shape[-2:]))
    return out.normal, out.kappa
