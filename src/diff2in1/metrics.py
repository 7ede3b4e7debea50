"""Surface-normal metrics (docs/method.md section 9): angular error in degrees, pooled over all
valid pixels.

Functions accept numpy arrays or torch tensors. Errors are computed in float64 with exact pi and
kept as float32 (ample for degrees); the pooled median is exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch

THRESHOLDS = {"a11": 11.25, "a22": 22.5, "a30": 30.0}


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def angular_error_deg(pred, gt, dim: int = -3):
    """Angle in degrees between pred and gt along `dim` (default -3: (..., 3, H, W)).

    Both are normalised (cosine similarity), cos is clamped to [-1, 1]. Returns the input's kind
    (torch -> float64 tensor on its device, otherwise a float64 numpy array) with `dim` removed.
    """
    if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
        p = torch.as_tensor(pred).double()
        g = torch.as_tensor(gt).double().to(p.device)
        cos = torch.nn.functional.cosine_similarity(p, g, dim=dim, eps=1e-12)
        return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))
    p, g = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    denom = np.maximum(np.linalg.norm(p, axis=dim) * np.linalg.norm(g, axis=dim), 1e-12)
    cos = np.clip((p * g).sum(axis=dim) / denom, -1.0, 1.0)
    return np.arccos(cos) * (180.0 / math.pi)


def normal_metrics(errors) -> dict[str, float]:
    """errors: any shape, degrees, only valid pixels -> mean, median, rmse, a11, a22, a30 (percent)."""
    e = _to_numpy(errors).astype(np.float64).ravel()
    if e.size == 0:
        raise ValueError("no valid pixels to compute normal metrics on")
    out = {
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "rmse": float(np.sqrt(np.mean(e * e))),
    }
    for name, t in THRESHOLDS.items():
        out[name] = float(np.mean(e < t) * 100.0)
    out["n_pixels"] = int(e.size)
    return out


class MetricAccumulator:
    """Pools the angular errors of every valid pixel of a test set (exact median).

    The whole state is `state()`, a 1-D float32 array of errors; a distributed run gathers the
    states of all ranks and concatenates them (`merge`), which equals a single-process run.
    """

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []

    def update(self, pred, gt, mask=None, dim: int = -3) -> np.ndarray:
        """Add a batch. pred/gt (..., 3, H, W) along `dim`; mask (..., H, W) or (..., 1, H, W), True =
        valid. Returns this batch's valid errors."""
        err = _to_numpy(angular_error_deg(pred, gt, dim))
        if mask is not None:
            m = _to_numpy(mask).astype(bool)
            if m.ndim == err.ndim + 1:
                m = np.squeeze(m, axis=dim)
            err = err[np.broadcast_to(m, err.shape)]
        return self.add_errors(err)

    def add_errors(self, errors) -> np.ndarray:
        """Add already computed errors (degrees, valid pixels only)."""
        e = _to_numpy(errors).astype(np.float32).ravel()
        self._chunks.append(e)
        return e

    def state(self) -> np.ndarray:
        """All errors so far, 1-D float32 (compacted into one chunk)."""
        if len(self._chunks) != 1:
            self._chunks = [np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)]
        return self._chunks[0]

    def merge(self, other) -> MetricAccumulator:
        """Add another accumulator or a `state()` array (e.g. gathered from another rank)."""
        self.add_errors(other.state() if isinstance(other, MetricAccumulator) else other)
        return self

    @classmethod
    def from_states(cls, states) -> MetricAccumulator:
        acc = cls()
        for s in states:
            acc.merge(s)
        return acc

    def __len__(self) -> int:
        return sum(c.size for c in self._chunks)

    def compute(self) -> dict[str, float]:
        return normal_metrics(self.state())


CALIBRATION_EDGES = (0.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 180.0)  # degrees


class CalibrationAccumulator:
    """Is the predicted uncertainty right? Pixels are binned by their predicted expected angular
    error (degrees, from kappa); per bin we keep the pixel count and the sums of predicted and
    observed error. Sums add up across batches and processes, so the result is exact.

    `compute()`: per bin the mean predicted and mean observed error, and `gap`, the pixel-weighted
    mean |predicted - observed| over the bins (degrees; 0 = perfectly calibrated).
    """

    def __init__(self, edges: tuple[float, ...] = CALIBRATION_EDGES) -> None:
        self.edges = np.asarray(edges, np.float64)
        n = len(edges) - 1
        self.count, self.pred_sum, self.obs_sum = np.zeros(n), np.zeros(n), np.zeros(n)

    def add(self, predicted_deg, observed_deg) -> None:
        """Predicted expected error and observed error (degrees) of the same valid pixels."""
        p = _to_numpy(predicted_deg).astype(np.float64).ravel()
        o = _to_numpy(observed_deg).astype(np.float64).ravel()
        b = np.clip(np.searchsorted(self.edges, p, side="right") - 1, 0, len(self.count) - 1)
        self.count += np.bincount(b, minlength=len(self.count))
        self.pred_sum += np.bincount(b, weights=p, minlength=len(self.count))
        self.obs_sum += np.bincount(b, weights=o, minlength=len(self.count))

    def state(self) -> np.ndarray:
        return np.stack([self.count, self.pred_sum, self.obs_sum])

    def merge(self, state: np.ndarray) -> CalibrationAccumulator:
        self.count += state[0]
        self.pred_sum += state[1]
        self.obs_sum += state[2]
        return self

    def compute(self) -> dict:
        used = self.count > 0
        n = self.count[used]
        pred, obs = self.pred_sum[used] / n, self.obs_sum[used] / n
        total = float(n.sum())
        return {
            "bins": [
                {
                    "from": float(lo),
                    "to": float(hi),
                    "pixels": int(c),
                    "predicted": float(p),
                    "observed": float(o),
                }
                for lo, hi, c, p, o in zip(
                    self.edges[:-1][used], self.edges[1:][used], n, pred, obs, strict=True
                )
            ],
            "gap": float((n * np.abs(pred - obs)).sum() / total) if total else float("nan"),
            "mean_predicted": float(self.pred_sum.sum() / total) if total else float("nan"),
            "mean_observed": float(self.obs_sum.sum() / total) if total else float("nan"),
        }



# Depth and segmentation metrics live in their own module; importable from here too.
from diff2in1.dense_metrics import (  # noqa: E402, F401
    DEPTH_KEYS,
    DepthAccumulator,
    SegmentationAccumulator,
    confusion_matrix,
    depth_metrics,
    eigen_crop_mask,
    metrics_from_confusion,
    segmentation_metrics,
)
