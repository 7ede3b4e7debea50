"""`diff2in1.intervals`: Student's t quantiles and the 95 % interval of a mean."""

from __future__ import annotations

import math

import pytest

from diff2in1.intervals import mean_interval, t_quantile_975


def test_t_quantiles_from_the_table_and_beyond():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(2) == 4.303 and t_quantile_975(30) == 2.042
    assert t_quantile_975(31) < 2.042 and t_quantile_975(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_interval():
    s = mean_interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # sample std 1, 2 degrees of freedom
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["t"] == 4.303
    assert s["ci95"] == pytest.approx([2.0 - half, 2.0 + half]) and (s["min"], s["max"]) == (1.0, 3.0)
    one = mean_interval([5.0])
    assert one["mean"] == 5.0 and one["ci95"] is None and one["std"] is None and one["t"] is None
