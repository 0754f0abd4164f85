from __future__ import annotations

import math

import numpy as np
import pytest

from selfimprove_rl.stats import COUNT_RANGE, band, paired_difference, t_interval


def test_t_interval_is_student_t_clipped_to_the_range() -> None:
    interval = t_interval([0.8, 0.9, 1.0])
    assert interval.mean == pytest.approx(0.9) and interval.n == 3
    half = 4.302652729749464 * 0.1 / math.sqrt(3)
    assert interval.low == pytest.approx(0.9 - half) and interval.high == 1.0
    wide = t_interval([0.2, 0.9])  # n = 2: 0.55 ± 4.45, which says nothing about a score
    assert (wide.low, wide.high) == (0.0, 1.0)
    assert t_interval([120.0, 80.0], bounds=COUNT_RANGE).low == 0.0
    assert math.isnan(t_interval([0.5]).low) and t_interval([]).n == 0


def test_paired_difference_uses_the_paired_t_test() -> None:
    from scipy.stats import ttest_rel

    a = {0: 0.9, 1: 0.7, 2: 0.85, 3: 0.6}
    b = {0: 0.5, 1: 0.6, 2: 0.55, 3: 0.62, 9: 0.1}
    result = paired_difference(a, b)
    assert result.n == 4
    assert result.mean == pytest.approx(np.mean([0.4, 0.1, 0.3, -0.02]))
    assert result.p_value == pytest.approx(
        ttest_rel(list(a.values()), [0.5, 0.6, 0.55, 0.62]).pvalue
    )
    assert -1.0 <= result.low <= result.mean <= result.high <= 1.0
    assert paired_difference({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}).p_value == 1.0
    assert paired_difference({0: 0.7, 1: 0.8}, {0: 0.5, 1: 0.6}).p_value == 0.0
    assert math.isnan(paired_difference({0: 0.7}, {0: 0.5}).p_value)


def test_band_handles_runs_of_different_lengths_and_clips() -> None:
    matrix = np.array([[0.1, 0.2, np.nan], [0.3, 0.4, 0.5], [0.2, np.nan, np.nan]])
    mean, low, high = band(matrix)
    assert mean.tolist() == pytest.approx([0.2, 0.3, 0.5])
    assert low[0] == max(0.0, 0.2 - 4.302652729749464 * 0.1 / math.sqrt(3))
    assert (low[1], high[1]) == (0.0, 1.0)  # n = 2, clipped
    assert low[2] == high[2] == 0.5
