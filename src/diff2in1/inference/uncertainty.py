"""kappa <-> expected angular error, and combining an ensemble of predictions (docs/method.md section 10).

The head's kappa parametrises an angular von Mises-Fisher distribution p(theta) ~ exp(-kappa theta);
its mean angle, pi e^(-k pi) / (1 + e^(-k pi)) + 2k / (k^2 + 1) radians (pi/2 at k = 0, about 2/k for
large k), is the uncertainty shown to people, in degrees.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def expected_error(kappa: Tensor) -> Tensor:
    """kappa (any shape, > 0) -> expected angular error in radians, same shape (float32 or wider)."""
    k = kappa.to(torch.promote_types(kappa.dtype, torch.float32))
    e = torch.exp(-(k * math.pi).clamp(max=700.0))
    return math.pi * e / (1 + e) + 2 * k / (k * k + 1)


def kappa_from_error(err: Tensor, iters: int = 60) -> Tensor:
    """The inverse of `expected_error`: the kappa whose expected angular error is `err` radians.

    `err` is clamped into (0, pi/2); bisection on log kappa in [1e-4, 1e6] (the function decreases).
    """
    target = err.double().clamp(1e-6, math.pi / 2 - 1e-6)
    lo = torch.full_like(target, math.log(1e-4))
    hi = torch.full_like(target, math.log(1e6))
    for _ in range(iters):
        mid = (lo + hi) / 2
        too_uncertain = expected_error(mid.exp()) > target  # kappa too small
        lo = torch.where(too_uncertain, mid, lo)
        hi = torch.where(too_uncertain, hi, mid)
    return ((lo + hi) / 2).exp().to(err.dtype)


def combine_members(normals: Tensor, kappas: Tensor) -> tuple[Tensor, Tensor]:
    """Ensemble members -> one prediction.

    normals (E, B, 3, H, W) unit vectors, kappas (E, B, 1, H, W). The normal is the kappa-weighted
    mean direction; the uncertainty adds the members' own expected error (kappa-weighted mean) and
    their spread (kappa-weighted mean angle to the combined normal) in quadrature, and is returned
    as the kappa with that expected error. Returns normal (B, 3, H, W), kappa (B, 1, H, W).
    """
    if normals.shape[0] == 1:
        return normals[0], kappas[0]
    w = kappas / kappas.sum(0, keepdim=True)  # (E, B, 1, H, W)
    mean = (w * normals).sum(0)
    mean = mean / (torch.linalg.vector_norm(mean, dim=1, keepdim=True) + 1e-10)
    cos = (normals * mean[None]).sum(2, keepdim=True).clamp(-1.0, 1.0)
    spread = (w * torch.acos(cos)).sum(0)
    own = (w * expected_error(kappas)).sum(0)
    total = torch.sqrt(own * own + spread * spread)
    return mean, kappa_from_error(total).to(kappas.dtype)
