"""How sure are we? Intervals and paired tests for comparing runs over seeds.

Comparisons here have few runs per cell (often 2-5 seeds), so the choices are made for small
n and bounded scores:

* :func:`t_interval`: the mean and its Student-t 95% interval, clipped to the range the
  value can take (a score lies in [0, 1]; a t interval from n = 2 is wide enough to leave it,
  which says nothing about the score), with n reported alongside; none below n = 2;
* :func:`paired_difference`: policies run on the same seeds share the checkpoint, the splits
  and the episode seeds, so their scores are paired by seed; the mean difference, its t
  interval (clipped to the difference's range) and the two-sided paired t-test p-value;
* :func:`band`: the same t interval column by column over runs of different lengths, for
  curves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

SCORE_RANGE = (0.0, 1.0)
COUNT_RANGE = (0.0, math.inf)
DIFFERENCE_RANGE = (-1.0, 1.0)
_TIE = 1e-12


class Interval(NamedTuple):
    """A mean with its 95% interval (``nan`` bounds when n < 2) and the number of values."""

    mean: float
    low: float
    high: float
    n: int


class PairedDifference(NamedTuple):
    """Mean of ``values - reference`` over shared seeds, its 95% interval, p-value and n."""

    mean: float
    low: float
    high: float
    p_value: float
    n: int


def _t_quantile(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def t_interval(values: Sequence[float], *, bounds: tuple[float, float] = SCORE_RANGE) -> Interval:
    """Return the mean and its Student-t 95% interval, clipped to ``bounds``.

    Example:
        >>> t_interval([0.8, 0.9, 1.0])
        Interval(mean=0.9, low=0.6515..., high=1.0, n=3)
        >>> t_interval([0.5])
        Interval(mean=0.5, low=nan, high=nan, n=1)
    """
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t_quantile(n - 1) * sd / math.sqrt(n)
    low, high = bounds
    return Interval(mean, max(low, mean - half), min(high, mean + half), n)


def paired_difference(
    values: Mapping[Any, float],
    reference: Mapping[Any, float],
    *,
    bounds: tuple[float, float] = DIFFERENCE_RANGE,
) -> PairedDifference:
    """Compare two sets of runs paired by key (the seed): mean difference, interval, p-value.

    The p-value is the two-sided paired t-test's (``scipy.stats.ttest_rel`` on the shared
    keys); when every difference is the same it is 1.0 for no difference and 0.0 otherwise
    (the t statistic is infinite; "the same" up to float rounding), and ``nan`` below two
    pairs.

    Example:
        >>> d = paired_difference({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.5, 1: 0.6, 2: 0.5})
        >>> round(d.mean, 3), d.n, d.p_value < 0.05
        (0.317, 3, True)
    """
    keys = [key for key in values if key in reference]
    diffs = [values[key] - reference[key] for key in keys]
    interval = t_interval(diffs, bounds=bounds)
    n = len(diffs)
    if n < 2:
        return PairedDifference(interval.mean, interval.low, interval.high, math.nan, n)
    if max(diffs) - min(diffs) <= _TIE * max(1.0, abs(interval.mean)):
        # Every pair differs by the same amount (up to rounding): t is 0/0 or infinite.
        p_value = 1.0 if abs(interval.mean) <= _TIE else 0.0
    else:
        from scipy.stats import ttest_rel

        result = ttest_rel([values[k] for k in keys], [reference[k] for k in keys])
        p_value = float(result.pvalue)
    return PairedDifference(interval.mean, interval.low, interval.high, p_value, n)


def band(matrix: Any, *, bounds: tuple[float, float] = SCORE_RANGE) -> tuple[Any, Any, Any]:
    """Column-wise mean and clipped 95% t band over runs (rows; ``nan`` where a run ended).

    Returns:
        ``(mean, low, high)`` arrays; where a column has one value the band is that value,
        where it has none everything is ``nan``.
    """
    import numpy as np
    from scipy.stats import t

    counts = np.sum(~np.isnan(matrix), axis=0)
    filled = np.where(np.isnan(matrix), 0.0, matrix)
    mean = filled.sum(axis=0) / np.maximum(counts, 1)
    squares = np.where(np.isnan(matrix), 0.0, (matrix - mean) ** 2).sum(axis=0)
    several = counts >= 2
    sd = np.sqrt(np.divide(squares, counts - 1, out=np.zeros_like(mean), where=several))
    quantile = t.ppf(0.975, np.maximum(counts - 1, 1))
    half = np.where(several, quantile * sd / np.sqrt(np.maximum(counts, 1)), 0.0)
    mean = np.where(counts > 0, mean, np.nan)
    return mean, np.clip(mean - half, *bounds), np.clip(mean + half, *bounds)
