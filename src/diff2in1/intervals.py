"""95 % intervals of a mean over a few runs (seeds): Student's t, for the demo and the study."""

from __future__ import annotations

import math

import numpy as np

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (table; 1.96 + 2.4/df above 30)."""
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_interval(values: list[float]) -> dict:
    """n, mean, sample std, min, max, the 95 % t-interval of the mean `ci95` [lo, hi] and the
    quantile `t` used (std, ci95 and t None with one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if n > 1 else None
    t = t_quantile_975(n - 1) if n > 1 else None
    half = t * std / math.sqrt(n) if n > 1 else None
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "min": float(min(values)),
        "max": float(max(values)),
        "ci95": [mean - half, mean + half] if half is not None else None,
        "t": t,
    }
