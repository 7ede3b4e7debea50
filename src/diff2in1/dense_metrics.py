"""Depth and semantic-segmentation metrics (docs/multitask.md), re-exported by `diff2in1.metrics`.

Depth, as the NYUv2 depth literature reports it (Eigen et al. 2014; BTS, AdaBins, VPD): per image
over its valid pixels, then averaged over images. Segmentation: one confusion matrix pooled over
the whole set. Both accumulators are exact under several processes: their states are gathered
and merged, and the result equals one process's bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")
MIN_DEPTH = 1e-3  # predictions are clipped to [MIN_DEPTH, max_depth] (as BTS / AdaBins evaluate)
# The Eigen crop: rows 45:471, columns 41:601 of a 480x640 NYUv2 image.
EIGEN_CROP_480x640 = (45, 471, 41, 601)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _hw(x: np.ndarray, name: str) -> np.ndarray:
    """(H, W), (1, H, W), (H, W, 1), (1, 1, H, W) ... -> (H, W)."""
    while x.ndim > 2 and (x.shape[0] == 1 or x.shape[-1] == 1):
        x = x[0] if x.shape[0] == 1 else x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected an H x W map, got shape {x.shape}")
    return x


def eigen_crop_mask(height: int, width: int) -> np.ndarray:
    """bool (H, W): True inside the Eigen crop. At sizes other than 480x640 the crop scales with
    the image, each bound rounded half up: rows [45 H / 480] : [471 H / 480], columns
    [41 W / 640] : [601 W / 640] (at 240x320: rows 23:236, columns 21:301)."""
    sy, sx = height / 480, width / 640
    scales = (sy, sy, sx, sx)
    r0, r1, c0, c1 = (math.floor(v * s + 0.5) for v, s in zip(EIGEN_CROP_480x640, scales, strict=True))
    m = np.zeros((height, width), bool)
    m[r0:r1, c0:c1] = True
    return m


def depth_metrics(
    pred,
    gt,
    mask=None,
    max_depth: float = 10.0,
    *,
    min_depth: float = MIN_DEPTH,
    eigen_crop: bool = False,
) -> dict[str, float]:
    """The eight depth metrics of one image (H x W arrays or tensors, metres).

    Valid pixels: gt > 0, gt <= max_depth, finite, `mask` (if given) and, with `eigen_crop`, inside
    the Eigen crop (`eigen_crop_mask`). The prediction is clipped to [min_depth, max_depth] (non-
    finite values to max_depth) so that its logarithm exists. With d = pred, g = gt over valid pixels:
    abs_rel = mean |d - g| / g; sq_rel = mean (d - g)^2 / g; rmse = sqrt mean (d - g)^2;
    rmse_log = sqrt mean (ln d - ln g)^2; log10 = mean |log10 d - log10 g|;
    delta_k = fraction of pixels with max(d / g, g / d) < 1.25^k (a fraction, not percent).
    Raises ValueError when no pixel is valid.
    """
    g = _hw(_np(gt), "gt").astype(np.float64)
    d = _hw(_np(pred), "pred").astype(np.float64)
    if d.shape != g.shape:
        raise ValueError(f"pred {d.shape} and gt {g.shape} differ in size")
    valid = np.isfinite(g) & (g > 0) & (g <= max_depth)
    if mask is not None:
        valid &= _hw(_np(mask), "mask").astype(bool)
    if eigen_crop:
        valid &= eigen_crop_mask(*g.shape)
    if not valid.any():
        raise ValueError("no valid depth pixel (gt > 0 and <= max_depth, inside mask/crop)")
    d = np.where(np.isfinite(d), d, max_depth)
    d = np.clip(d[valid], min_depth, max_depth)
    g = g[valid]
    ratio = np.maximum(d / g, g / d)
    diff = d - g
    return {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff * diff / g)),
        "rmse": float(np.sqrt(np.mean(diff * diff))),
        "rmse_log": float(np.sqrt(np.mean((np.log(d) - np.log(g)) ** 2))),
        "log10": float(np.mean(np.abs(np.log10(d) - np.log10(g)))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


class DepthAccumulator:
    """Per-image depth metrics of a set, averaged over images.

    The state is one row per image, [key, the eight metrics] (float64); `compute` orders the rows
    by key before averaging, so states gathered from several processes (keys = dataset indices)
    give exactly the single-process result. Images without a valid pixel are counted, not averaged.
    """

    def __init__(self, max_depth: float = 10.0, eigen_crop: bool = False, min_depth: float = MIN_DEPTH):
        self.max_depth, self.eigen_crop, self.min_depth = max_depth, eigen_crop, min_depth
        self._rows: list[np.ndarray] = []
        self.n_empty = 0

    def update(self, pred, gt, mask=None, key: float | None = None) -> dict[str, float] | None:
        """Add one image; returns its metrics (None when it has no valid pixel). `key` orders the
        images (default: the order of arrival in this accumulator)."""
        try:
            m = depth_metrics(
                pred, gt, mask, self.max_depth, min_depth=self.min_depth, eigen_crop=self.eigen_crop
            )
        except ValueError as e:
            if "no valid depth pixel" not in str(e):
                raise
            self.n_empty += 1
            return None
        k = float(len(self._rows) if key is None else key)
        self._rows.append(np.array([k] + [m[name] for name in DEPTH_KEYS], np.float64))
        return m

    def state(self) -> np.ndarray:
        """(n_images, 9) float64: key, then DEPTH_KEYS."""
        return np.stack(self._rows) if self._rows else np.zeros((0, 1 + len(DEPTH_KEYS)))

    def merge(self, other: DepthAccumulator | np.ndarray) -> DepthAccumulator:
        rows = other.state() if isinstance(other, DepthAccumulator) else np.asarray(other, np.float64)
        self._rows.extend(rows.reshape(-1, 1 + len(DEPTH_KEYS)))
        if isinstance(other, DepthAccumulator):
            self.n_empty += other.n_empty
        return self

    @classmethod
    def from_states(cls, states, **kwargs) -> DepthAccumulator:
        """One accumulator from the `state()`s of several processes (any order)."""
        acc = cls(**kwargs)
        for st in states:
            acc.merge(st)
        return acc

    def __len__(self) -> int:
        return len(self._rows)

    def compute(self) -> dict[str, float]:
        s = self.state()
        if not len(s):
            raise ValueError("no image with a valid depth pixel to compute depth metrics on")
        s = s[np.argsort(s[:, 0], kind="stable")]
        out = {name: float(math.fsum(s[:, i + 1]) / len(s)) for i, name in enumerate(DEPTH_KEYS)}
        out["n_images"] = len(s)
        return out


# ---------------------------------------------------------------------------- segmentation


def confusion_matrix(pred, gt, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """int64 (num_classes, num_classes) counts: row = ground-truth class, column = predicted class.

    Pixels whose ground truth is `ignore_index` are left out. A ground-truth or predicted id
    outside 0..num_classes-1 at a counted pixel is a ValueError.
    """
    p = _np(pred).astype(np.int64).ravel()
    g = _np(gt).astype(np.int64).ravel()
    if p.shape != g.shape:
        raise ValueError(f"pred ({_np(pred).shape}) and gt ({_np(gt).shape}) differ in size")
    keep = g != ignore_index
    p, g = p[keep], g[keep]
    for name, x in (("gt", g), ("pred", p)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name}: class id {int(x.max() if x.max() >= num_classes else x.min())} "
                             f"outside 0..{num_classes - 1}")  # fmt: skip
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, -1)


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """miou (over classes present in ground truth or prediction), pixel_acc, mean_acc (over classes
    present in ground truth), per-class iou and acc (None for a class absent from both / from gt)."""
    cm = np.asarray(cm, np.int64)
    tp = np.diag(cm).astype(np.float64)
    gt_n, pred_n = cm.sum(1), cm.sum(0)
    union = gt_n + pred_n - tp
    total = cm.sum()
    if total == 0:
        raise ValueError("no labelled pixel to compute segmentation metrics on")
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    acc = np.where(gt_n > 0, tp / np.maximum(gt_n, 1), np.nan)
    return {
        "miou": float(iou[present].mean()),
        "pixel_acc": float(tp.sum() / total),
        "mean_acc": float(acc[gt_n > 0].mean()),
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "acc": [None if np.isnan(v) else float(v) for v in acc],
        "n_pixels": int(total),
        "n_classes_present": int(present.sum()),
    }


def segmentation_metrics(pred, gt, num_classes: int, ignore_index: int = 255) -> dict:
    """Metrics of one class map (or a batch, pooled): pred and gt integer maps of equal shape.
    See `metrics_from_confusion` for the keys."""
    return metrics_from_confusion(confusion_matrix(pred, gt, num_classes, ignore_index))


class SegmentationAccumulator:
    """One confusion matrix pooled over a set. Its state is the int64 matrix: states from several
    processes add up (an integer all-reduce) to exactly the single-process matrix."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred, gt) -> None:
        self.matrix += confusion_matrix(pred, gt, self.num_classes, self.ignore_index)

    def state(self) -> np.ndarray:
        return self.matrix

    def merge(self, other: SegmentationAccumulator | np.ndarray) -> SegmentationAccumulator:
        m = other.state() if isinstance(other, SegmentationAccumulator) else np.asarray(other)
        if m.shape != self.matrix.shape:
            raise ValueError(f"confusion matrix {m.shape} does not match {self.matrix.shape}")
        self.matrix += m.astype(np.int64)
        return self

    @classmethod
    def from_states(cls, states, ignore_index: int = 255) -> SegmentationAccumulator:
        """One accumulator from the `state()`s (confusion matrices) of several processes."""
        states = [np.asarray(s) for s in states]
        acc = cls(states[0].shape[0], ignore_index)
        for st in states:
            acc.merge(st)
        return acc

    def compute(self) -> dict:
        return metrics_from_confusion(self.matrix)


__all__ = [
    "DEPTH_KEYS",
    "EIGEN_CROP_480x640",
    "DepthAccumulator",
    "SegmentationAccumulator",
    "confusion_matrix",
    "depth_metrics",
    "eigen_crop_mask",
    "metrics_from_confusion",
    "segmentation_metrics",
]
