"""Bae et al. (2021) normal decoder, "GN" variant, with uncertainty-guided point refinement
(docs/method.md section 3).

Inputs f4..f0 at 1/32 .. 1/2 of the image. Outputs are 4-channel maps [unit xyz, kappa].
Training refines N = int(ratio * H * W) points per scale, chosen by `sample_point_indices`;
eval refines every pixel (a dense 1x1 conv is the point MLP run everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_KAPPA = 0.01


def norm_normalize(out: Tensor) -> Tensor:
    """(B, 4, ...) raw -> [xyz / (||xyz|| + 1e-10), elu(k) + 1 + 0.01], float32 (also under autocast)."""
    xyz, k = out[:, :3].float(), out[:, 3:].float()
    norm = torch.sqrt((xyz * xyz).sum(1, keepdim=True)) + 1e-10
    return torch.cat([xyz / norm, F.elu(k) + 1.0 + MIN_KAPPA], 1)


def up2(x: Tensor) -> Tensor:
    """2x bilinear upsampling, align_corners True (the decoder's "2x")."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class WSConv2d(nn.Conv2d):
    """Conv2d with weight standardisation per output channel: (W - mean) / (std_unbiased + 1e-10)."""

    def forward(self, x: Tensor) -> Tensor:
        # One fused layer_norm (forward and backward) instead of mean, sub, std, div: about 3x faster
        # on the decoder's 20M-weight convs. layer_norm divides by sqrt(biased var + eps); the factor
        # sqrt((n-1)/n) makes it the unbiased std, and eps = 1e-20 (= (1e-10)^2, inside the sqrt)
        # plays the +1e-10: a constant channel still gives 0. Equal to the plain formula to ~1e-7.
        w = self.weight
        n = w[0].numel()
        std_w = F.layer_norm(w.flatten(1), (n,), eps=1e-20).view_as(w) * ((n - 1) / n) ** 0.5
        return self._conv_forward(x, std_w, self.bias)


class UpBlock(nn.Module):
    """Resize to the skip's size (align_corners True), [up, skip], 2 x (WS-conv3x3, GN, LeakyReLU)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = WSConv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.conv2 = WSConv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        h = F.leaky_relu(self.norm1(self.conv1(torch.cat([up, skip], 1))), 0.01)
        return F.leaky_relu(self.norm2(self.conv2(h)), 0.01)


def refine_mlp(in_channels: int, hidden: int) -> nn.Sequential:
    """Pointwise MLP of 1x1 conv1d: in -> hidden -> hidden -> hidden -> 4 (ReLU between)."""
    return nn.Sequential(
        nn.Conv1d(in_channels, hidden, 1),
        nn.ReLU(),
        nn.Conv1d(hidden, hidden, 1),
        nn.ReLU(),
        nn.Conv1d(hidden, hidden, 1),
        nn.ReLU(),
        nn.Conv1d(hidden, 4, 1),
    )


def sample_point_indices(
    kappa: Tensor,
    valid: Tensor | None,
    n_points: int,
    n_uncertain: int,
    generators: list[torch.Generator] | None = None,
) -> Tensor:
    """Flat pixel indices (B, n_points): the n_uncertain lowest-kappa pixels, then the rest at random.

    kappa (B, H, W); valid (B, H, W) bool or None. Invalid pixels are ranked after every valid one,
    so they are never among the uncertain ones while enough valid pixels exist. The random part is
    drawn uniformly without replacement from all remaining pixels, batched (no loop over B); with
    one generator per image, each image's draw is independent of its batch (and process).
    """
    b = kappa.shape[0]
    score = -kappa.reshape(b, -1)  # higher = more uncertain
    if valid is not None:
        score = score.masked_fill(~valid.reshape(b, -1), float("-inf"))
    order = score.argsort(dim=1, descending=True)
    uncertain, rest = order[:, :n_uncertain], order[:, n_uncertain:]
    n_random = n_points - n_uncertain
    if n_random <= 0:
        return uncertain
    if generators is None:
        scores = torch.rand(rest.shape, device=rest.device)
    else:
        scores = torch.stack([torch.rand(rest.shape[1], generator=g) for g in generators]).to(rest.device)
    pick = scores.argsort(dim=1)[:, :n_random]
    return torch.cat([uncertain, rest.gather(1, pick)], 1)


def indices_to_coords(idx: Tensor, height: int, width: int) -> Tensor:
    """Flat indices (B, N) -> grid_sample coordinates (B, N, 2) as (x, y) in [-1, 1], align_corners True."""
    rows = torch.div(idx, width, rounding_mode="floor")
    cols = idx - rows * width
    # max(.., 1) keeps a 1-pixel axis at -1 instead of dividing by zero.
    x = cols.float() / max(width - 1, 1) * 2.0 - 1.0
    y = rows.float() / max(height - 1, 1) * 2.0 - 1.0
    return torch.stack([x, y], -1)


def bilinear_rows(x: Tensor, idx: Tensor, out_h: int, out_w: int) -> Tensor:
    """Bilinear read (align_corners True) of x (B, C, h, w) at the flat pixel indices idx (B, N) of
    the (out_h, out_w) grid -> rows (B * N, C).

    Equal to `grid_sample` at those pixels, or to indexing `interpolate(x, (out_h, out_w))`, but
    built from four row gathers of channel-last x: the backward is then four row-wise index-adds
    instead of grid_sample's scatter, about 10x faster on CPU, and the upsampled map never exists.
    """
    b, c, h, w = x.shape
    oy = torch.div(idx, out_w, rounding_mode="floor")
    ox = idx - oy * out_w
    # Source coordinates of output pixels, align_corners True: i * (in - 1) / (out - 1).
    sy = oy.to(torch.float32) * ((h - 1) / max(out_h - 1, 1))
    sx = ox.to(torch.float32) * ((w - 1) / max(out_w - 1, 1))
    y0, x0 = sy.floor().long().clamp(max=h - 1), sx.floor().long().clamp(max=w - 1)
    y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    # float32 weights: under bf16 autocast the sums are then taken in float32 (as grid_sample's are).
    wy, wx = (sy - y0).reshape(-1, 1), (sx - x0).reshape(-1, 1)  # (B*N, 1)
    base = (torch.arange(b, device=x.device) * (h * w)).unsqueeze(1)  # (B, 1)
    table = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # (B*h*w, C), one row per pixel

    def rows(yy: Tensor, xx: Tensor) -> Tensor:
        return table.index_select(0, (base + yy * w + xx).reshape(-1))

    top = rows(y0, x0) * (1 - wx) + rows(y0, x1) * wx
    bottom = rows(y1, x0) * (1 - wx) + rows(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def mlp_rows(mlp: nn.Sequential, x: Tensor) -> Tensor:
    """Run a `refine_mlp` on rows x (M, C_in) -> (M, 4): its 1x1 Conv1d layers as plain matmuls
    (the same parameters; no (B, C, N) layout round trips)."""
    for layer in mlp:
        x = F.linear(x, layer.weight.squeeze(-1), layer.bias) if isinstance(layer, nn.Conv1d) else layer(x)
    return x


def rows_to_maps(rows: Tensor, b: int) -> Tensor:
    """(B * N, C) rows -> (B, C, N)."""
    return rows.reshape(b, -1, rows.shape[-1]).transpose(1, 2)


@dataclass
class DecoderOutput:
    """final (B, 4, H, W) at 2x the d4 size; coarse (B, 4, H/8, W/8); per refinement scale (1/4, 1/2, 1)
    in training: point predictions (B, 4, N_s) and their coordinates (B, N_s, 2)."""

    final: Tensor
    coarse: Tensor
    point_preds: list[Tensor] = field(default_factory=list)
    point_coords: list[Tensor] = field(default_factory=list)


class NormalDecoder(nn.Module):
    """d0 = 1x1 conv on f4, four up-blocks, a 1/8 output and three refinements (1/4, 1/2, 1)."""

    def __init__(
        self,
        skip_channels: tuple[int, int, int, int, int],
        widths: tuple[int, int, int, int, int],
        refine_hidden: int = 128,
        gn_groups: int = 8,
        sampling_ratio: float = 0.4,
        importance_ratio: float = 0.7,
    ) -> None:
        super().__init__()
        c4, c3, c2, c1, c0 = skip_channels
        w0, w1, w2, w3, w4 = widths
        self.sampling_ratio = sampling_ratio
        self.importance_ratio = importance_ratio
        self.d0 = nn.Conv2d(c4, w0, 1)
        self.up1 = UpBlock(w0 + c3, w1, gn_groups)
        self.up2 = UpBlock(w1 + c2, w2, gn_groups)
        self.up3 = UpBlock(w2 + c1, w3, gn_groups)
        self.up4 = UpBlock(w3 + c0, w4, gn_groups)
        self.out8 = nn.Conv2d(w2, 4, 3, padding=1)
        # Note the 1/4 refinement reads d2 (not d3), as in the research decoder.
        self.refine4 = refine_mlp(w2 + 4, refine_hidden)
        self.refine2 = refine_mlp(w3 + 4, refine_hidden)
        self.refine1 = refine_mlp(w4 + 4, refine_hidden)

    def forward(
        self,
        skips: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
        gt_mask: Tensor | None = None,
        generators: list[torch.Generator] | None = None,
    ) -> DecoderOutput:
        f4, f3, f2, f1, f0 = skips
        d1 = self.up1(self.d0(f4), f3)
        d2 = self.up2(d1, f2)  # 1/8
        d3 = self.up3(d2, f1)  # 1/4
        d4 = self.up4(d3, f0)  # 1/2
        coarse = norm_normalize(self.out8(d2))
        out = DecoderOutput(final=coarse, coarse=coarse)
        pred = coarse
        for mlp, feat in ((self.refine4, d2), (self.refine2, d3), (self.refine1, d4)):
            if self.training:
                pred, pts, coords = self._refine_points(mlp, feat, pred, gt_mask, generators)
                out.point_preds.append(pts)
                out.point_coords.append(coords)
            else:
                pred = self._refine_dense(mlp, feat, pred)
        out.final = pred
        return out

    @staticmethod
    def _refine_dense(mlp: nn.Sequential, feat: Tensor, prev: Tensor) -> Tensor:
        """Refine every pixel of the 2x grid: feat (B, C, h, w), prev (B, 4, h, w) -> (B, 4, 2h, 2w).

        The MLP's first layer is linear and bilinear weights sum to 1, so it commutes with the 2x
        upsampling: it runs on the h x w rows and its output is upsampled once, instead of
        upsampling and concatenating the inputs at 2h x 2w (same result, a quarter of its FLOPs).
        """
        first = mlp[0]
        b, c, h, w = feat.shape
        x = torch.cat([feat, prev.to(feat.dtype)], 1).permute(0, 2, 3, 1).reshape(b * h * w, c + 4)
        y = F.linear(x, first.weight.squeeze(-1)).reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (B, hid, h, w)
        y = up2(y) + first.bias.to(y.dtype)[:, None, None]  # (B, hid, 2h, 2w), channels-last strides
        rows = mlp_rows(mlp[1:], y.permute(0, 2, 3, 1).reshape(b * 4 * h * w, -1))  # (B*2h*2w, 4)
        return norm_normalize(rows.reshape(b, 2 * h, 2 * w, 4).permute(0, 3, 1, 2))

    def _refine_points(
        self,
        mlp: nn.Sequential,
        feat: Tensor,
        prev: Tensor,
        gt_mask: Tensor | None,
        generators: list[torch.Generator] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Start from 2x(prev) and overwrite N refined points. Returns (dense (B, 4, 2h, 2w),
        point predictions (B, 4, N), point coords (B, N, 2))."""
        dense = up2(prev)
        b, _, h, w = dense.shape
        n_points = int(self.sampling_ratio * h * w)
        n_uncertain = int(self.importance_ratio * n_points)
        valid = None
        if gt_mask is not None:
            valid = F.interpolate(gt_mask.to(dense.dtype), size=(h, w), mode="nearest")[:, 0] > 0.5
        idx = sample_point_indices(dense[:, 3].detach(), valid, n_points, n_uncertain, generators)  # (B, N)
        coords = indices_to_coords(idx, h, w)
        # Reading 2x(feat) at a pixel of the 2x grid is a bilinear read of feat (align_corners True),
        # so the upsampled features are never materialised.
        x = torch.cat([feat, prev.to(feat.dtype)], 1)  # (B, C + 4, h/2, w/2)
        pts = norm_normalize(rows_to_maps(mlp_rows(mlp, bilinear_rows(x, idx, h, w)), b))  # (B, 4, N)
        dense = dense.reshape(b, 4, h * w).scatter(2, idx.unsqueeze(1).expand(-1, 4, -1), pts.to(dense.dtype))
        return dense.reshape(b, 4, h, w), pts, coords
