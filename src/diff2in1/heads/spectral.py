"""Spectrally normalised conv, the research variant (docs/method.md section 3).

One power iteration per forward in both modes, starting from the stored buffer `u0`:
    v = normalize(u0 W),  u' = normalize(v W^T),  sigma = v W^T u'^T,  conv uses W / sigma,
with W the weight as (out, in*k*k). In training `u0` is overwritten by u' (and `sv0` logs sigma);
in eval both buffers are left alone. torch's own `spectral_norm` differs in eval, hence this class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def power_iteration(weight: Tensor, u: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """One power-iteration step, no gradient: weight (out, ...), u (1, out) -> u' (1, out), v (1, in*k*k)."""
    w = weight.detach().flatten(1)
    with torch.no_grad():
        v = F.normalize(u @ w, dim=1, eps=eps)
        u_new = F.normalize(v @ w.t(), dim=1, eps=eps)
    return u_new, v


class SNConv2d(nn.Conv2d):
    """Conv2d whose weight is divided by a one-step estimate of its largest singular value.

    Buffers: `u0` (1, out) left singular vector estimate, `sv0` (1,) last sigma seen in training.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        bias: bool = True,
        eps: float = 1e-4,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.eps = eps
        self.register_buffer("u0", torch.randn(1, out_channels))
        self.register_buffer("sv0", torch.ones(1))

    def sigma(self) -> Tensor:
        """Scalar sigma; differentiable in the weight (u', v are constants), updates buffers in training."""
        u_new, v = power_iteration(self.weight, self.u0, self.eps)
        # sigma = v W^T u'^T with the gradient flowing through W only.
        sigma = (v @ self.weight.flatten(1).t() @ u_new.t()).reshape(())
        if self.training:
            with torch.no_grad():
                self.u0.copy_(u_new)
                self.sv0.copy_(sigma.detach().reshape(1))
        return sigma

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight / self.sigma(), self.bias)
