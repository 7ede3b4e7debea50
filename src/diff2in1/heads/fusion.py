"""Feature fusion (the research code's `SNmodule`, docs/method.md section 3): four tap groups ->
f4, f3, f2, f1, f0.

L = latent size. Output sizes: f4 at L/4, f3 at L/2, f2 at L, f1 at 2L, f0 at 4L, i.e. 1/32 .. 1/2 of
the image, which is what the Bae decoder expects. Tail (docs/method.md section 3):
g0 = ReLU(BN(g)); f1 = ReLU(BN(convT(g0))) -- activated, because the research code's in-place ReLU
overwrites the tensor it returns as "before_relu"; f0 = BN(convT([f1, resize(g0)])) without ReLU.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batchnorm import BatchNorm2d, batch_norm
from .spectral import SNConv2d


class FeatureGroups(Protocol):
    """Anything with the four tap groups (e.g. `diff2in1.taps.TapFeatures`), each (B, C_group, h, w)."""

    low: Tensor
    mid: Tensor
    high: Tensor
    highest: Tensor


def resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear, align_corners False ("resize" in the notation of docs/method.md); a no-op at the
    same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ResidualBlock(nn.Module):
    """a = ReLU(BN1(x)); out = conv2(ReLU(BN2(conv1(a)))) + conv_sc(a).

    The shortcut sees the activated tensor `a`, as the research code computes it. BN1/BN2 have no
    affine parameters (eps 1e-4, momentum 0.1); their statistics are the buffers stored_mean1/var1,
    stored_mean2/var2 (research names, kept so checkpoints map one to one).
    """

    bn_eps = 1e-4
    bn_momentum = 0.1

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = SNConv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = SNConv2d(out_channels, out_channels, 3, padding=1)
        self.conv_sc = SNConv2d(in_channels, out_channels, 1)
        self.register_buffer("stored_mean1", torch.zeros(in_channels))
        self.register_buffer("stored_var1", torch.ones(in_channels))
        self.register_buffer("stored_mean2", torch.zeros(out_channels))
        self.register_buffer("stored_var2", torch.ones(out_channels))

    def _bn(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return batch_norm(x, mean, var, None, None, self.training, self.bn_momentum, self.bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self._bn(x, self.stored_mean1, self.stored_var1))
        h = F.relu(self._bn(self.conv1(a), self.stored_mean2, self.stored_var2))
        return self.conv2(h) + self.conv_sc(a)


class FeatureFusion(nn.Module):
    """low/mid/high/highest tap groups -> (f4, f3, f2, f1, f0); f1 is after its ReLU, f0 before.

    Each projection's width equals its block's output width (m = f3, h = f2, e = g), as in the
    reference widths.
    """

    def __init__(
        self,
        in_channels: tuple[int, int, int, int],
        f4: int,
        f3: int,
        f2: int,
        g: int,
        f1: int,
        f0: int,
    ) -> None:
        super().__init__()
        c_low, c_mid, c_high, c_highest = in_channels
        self.low_proj = nn.Conv2d(c_low, f4, 1, bias=False)
        self.mid_proj = nn.Conv2d(c_mid, f3, 1, bias=False)
        self.mid_block = ResidualBlock(f4 + f3, f3)
        self.high_proj = nn.Conv2d(c_high, f2, 1, bias=False)
        self.high_block = ResidualBlock(f3 + f2, f2)
        self.highest_proj = nn.Conv2d(c_highest, g, 1, bias=False)
        self.highest_block = ResidualBlock(f2 + g, g)
        self.bn0 = BatchNorm2d(g)
        self.up1 = nn.ConvTranspose2d(g, f1, 2, stride=2)
        self.bn1 = BatchNorm2d(f1)
        self.up2 = nn.ConvTranspose2d(f1 + g, f0, 2, stride=2)
        self.bn2 = BatchNorm2d(f0)

    def forward(self, feats: FeatureGroups) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        mid_size, high_size, top_size = feats.mid.shape[-2:], feats.high.shape[-2:], feats.highest.shape[-2:]
        # docs/method.md section 3: resize each group to the next size, then 1x1 conv (no bias). A
        # bias-free 1x1 conv and a bilinear resize commute exactly, so project first: same math,
        # far fewer FLOPs.
        f4 = resize(self.low_proj(feats.low), mid_size)  # (B, f4, L/4)
        m = resize(self.mid_proj(feats.mid), high_size)  # (B, f3, L/2)
        f3 = self.mid_block(torch.cat([resize(f4, high_size), m], 1))  # (B, f3, L/2)
        h = resize(self.high_proj(feats.high), top_size)  # (B, f2, L)
        f2 = self.high_block(torch.cat([resize(f3, top_size), h], 1))  # (B, f2, L)
        e = self.highest_proj(feats.highest)  # (B, g, L)
        g = self.highest_block(torch.cat([f2, e], 1))  # (B, g, L)
        g0 = F.relu(self.bn0(g))
        # The research code returns this map under the name "before_relu", but its in-place ReLU
        # overwrites that very tensor: both the decoder and f0 receive the *activated* f1
        # (docs/method.md section 3).
        f1 = F.relu(self.bn1(self.up1(g0)))  # (B, f1, 2L)
        f0 = self.bn2(self.up2(torch.cat([f1, resize(g0, f1.shape[-2:])], 1)))  # (B, f0, 4L), no ReLU
        return f4, f3, f2, f1, f0
