"""Batch normalisation whose training statistics span every data-parallel process.

With N processes each holding B/N images, per-process statistics differ from the statistics of
the global batch of B, so N-process training would not match 1-process training. torch's
SyncBatchNorm needs a GPU; this works on any device and backend (gloo included), and is plain
`F.batch_norm` when there is one process or in eval mode.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """F.batch_norm over (B, C, H, W), with statistics all-reduced across processes in training."""
    if not training or _world() == 1:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    from torch.distributed.nn.functional import all_reduce  # differentiable all-reduce

    c = x.shape[1]
    xf = x.float()
    count = torch.full((1,), xf.numel() / c, device=x.device)
    # Two passes (mean, then squared deviations), as F.batch_norm: E[x^2] - E[x]^2 in float32 loses
    # digits when a channel's mean is large against its spread, and 2 processes then drift from 1.
    stats = all_reduce(torch.cat([xf.sum((0, 2, 3)), count]))
    n = stats[-1]
    mean = stats[:c] / n
    var = all_reduce((xf - mean.view(1, c, 1, 1)).pow(2).sum((0, 2, 3))) / n  # biased, as BN normalises
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
        running_var.mul_(1 - momentum).add_(var.detach() * n / (n - 1), alpha=momentum)
    y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + eps)
    if weight is not None:
        y = y * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)
    return y.to(x.dtype)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters and buffers) with cross-process statistics in training."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _world() == 1:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        return batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps
        )
