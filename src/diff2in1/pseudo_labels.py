"""How much each synthetic pixel's label counts in the self-improving stage (docs/method.md section 8).

The research code trains on the creation head's labels of every synthetic pixel alike ("research").
The head also says how sure it is, so two alternatives use that (a flag, never the default):

- "weighted": each synthetic pixel's loss term is multiplied by the creation head's confidence c in
  [0, 1]; the mean still divides by the number of counted pixels, so c = 1 everywhere is "research".
- "filtered": a synthetic pixel counts only if its confidence is at least the q-quantile of the
  confidences of its own image (per image, so the choice does not depend on the batch or process).

Confidence of a normal label: c = 1 - E(kappa) / (pi / 2), where E(kappa) is the expected angular
error of the head's angular von Mises-Fisher distribution (docs/method.md section 10); E runs from
pi / 2 (kappa = 0: no idea) down to 0, so c runs from 0 up to 1. Labelled (real) pixels always count
with weight 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .inference.uncertainty import expected_error

MODES = ("research", "weighted", "filtered")


def normal_confidence(kappa: Tensor) -> Tensor:
    """kappa (B, 1, H, W) > 0 -> confidence (B, 1, H, W) in [0, 1]: 1 - E(kappa) / (pi / 2)."""
    return (1.0 - expected_error(kappa) / (math.pi / 2)).clamp(0.0, 1.0)


def quantile_keep(confidence: Tensor, q: float) -> Tensor:
    """(B, 1, H, W) bool: pixels whose confidence is >= the q-quantile of their own image's."""
    flat = confidence.flatten(1).float()
    # "higher": a value some pixel has, so q = 0.75 keeps the top quarter of distinct confidences
    threshold = torch.quantile(flat, q, dim=1, interpolation="higher")
    return confidence >= threshold.view(-1, *([1] * (confidence.dim() - 1))).to(confidence.dtype)


def label_weights(
    mode: str, confidence: Tensor, labelled: Tensor, mask: Tensor, quantile: float = 0.5
) -> tuple[Tensor, Tensor | None]:
    """The loss mask and per-pixel weights of a mixed batch.

    confidence (B, 1, H, W) of the creation head's labels; labelled (B,) bool (True = real ground
    truth); mask (B, 1, H, W) bool. Returns (mask, weight): "research" gives the mask unchanged and
    weight None (the research loss, bit for bit); "weighted" the mask and weights (1 on labelled
    samples, c on synthetic ones); "filtered" the mask without the synthetic pixels below the quantile
    and weight None.
    """
    if mode == "research":
        return mask, None
    real = labelled.to(mask.device).bool().view(-1, 1, 1, 1)
    if mode == "weighted":
        weight = torch.where(real, torch.ones_like(confidence), confidence)
        return mask, weight
    if mode == "filtered":
        keep = quantile_keep(confidence, quantile)
        return mask & (real | keep), None
    raise ValueError(f"unknown pseudo-label mode {mode!r}; choose one of {', '.join(MODES)}")
