"""Is a candidate better than the live build? An anytime-valid paired test that stops early.

The gate compares two prompt versions on the same test samples: each sample gives a paired
difference ``d = score(candidate) - score(live)`` in [-1, 1]. The samples come in a random
order and in chunks, and after every chunk the gate may stop. Looking at the data after
every chunk and stopping when it looks good is exactly what a fixed-n test forbids, so the
bounds here form a *confidence sequence* (Howard et al. 2021; Waudby-Smith & Ramdas 2023,
"Estimating means of bounded random variables by betting"): with probability at least
``1 - alpha`` the mean paired gain stays above the lower bound *at every sample count at
once* (and, separately, below the upper bound), so stopping at any data-dependent time keeps
the guarantee. Each side is one-sided at level ``alpha`` because each guards one decision:
the lower bound promotion (a false promotion has probability at most ``alpha``), the upper
bound an early rejection.

The construction is testing by betting. For a candidate mean ``m`` a gambler starts with
capital 1 and stakes, on each new difference, a fixed fraction ``f`` of the capital on
"the mean is above m" (the lower side) or "below m" (the upper side):

* lower side: ``K+(m) = prod_i (1 + f (d_i - m) / (1 + m))``;
* upper side: ``K-(m) = prod_i (1 + f (m - d_i) / (1 - m))``.

A factor never drops below ``1 - f > 0`` because ``d`` lies in [-1, 1], so each product is a
nonnegative martingale (supermartingale under the composite null) when the true mean is
``m``, and Ville's inequality bounds the chance that it *ever* reaches ``1 / alpha`` by
``alpha``. The gate averages the capital over a few fractions ``f`` (a mixture of
martingales is one; it loses at most ``log(len(fractions))`` against the best fraction in
hindsight), so it bets boldly when the differences are clear-cut (a rule that fixes a
whole class of inputs) and cautiously when they are noisy. Every ``m`` whose capital has
reached ``1 / alpha`` at some sample count is out of the sequence; the factors are monotone
in ``m`` (the lower side's shrink as ``m`` grows, the upper side's grow), so what is left is
an interval ``[lower, upper]`` found by bisection.

The observations are the test samples in a random order drawn per gate; they are i.i.d.
draws from the data's distribution, so the bounds are about the *expected* paired gain on
new data, not about the fixed test split (a bound on the split alone would let a lucky split
promote an edit that is no better on holdout).

Example:
    >>> seq = ConfidenceSequence(alpha=0.05)
    >>> seq.update([1.0] * 12)
    >>> bounds = seq.bounds()
    >>> round(bounds.lower, 3) > 0.2, bounds.upper
    (True, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import numpy as np

from selfimprove_rl.errors import ConfigError, EvaluatorError

DEFAULT_FRACTIONS = (0.1, 0.3, 0.6, 0.9)
"""Betting fractions of the mixture: a cautious end for noisy gains, a bold one for clear wins."""

_BISECTIONS = 32
_EDGE = 1e-9

VerdictKind = Literal["accept", "reject", "continue"]


class Bounds(NamedTuple):
    """The confidence sequence after ``n`` differences: the mean gain and where it lies."""

    n: int
    mean: float
    lower: float
    upper: float


class Verdict(NamedTuple):
    """What the gate does after a chunk, and why (see :func:`verdict`)."""

    verdict: VerdictKind
    reason: str


def spent_alpha(
    alpha: float, gate_index: int, spending: Literal["none", "inverse_square"]
) -> float:
    """The level of the ``gate_index``-th gate (1-based) of a run under an alpha-spending rule.

    ``"inverse_square"`` gives the k-th gate ``alpha * 6 / (pi^2 k^2)``: the levels sum to
    ``alpha`` over infinitely many gates, so the chance that a run *ever* promotes a build
    that is not better than the live one by ``min_improvement`` stays below ``alpha`` (a
    union bound over gates), however the candidates were chosen — including by a policy that
    adapts to earlier gate outcomes on the same test split. ``"none"`` gives every gate
    ``alpha`` (each gate's own error rate is ``alpha``, but not the run's).

    Example:
        >>> round(spent_alpha(0.05, 1, "inverse_square"), 5)
        0.0304
        >>> spent_alpha(0.05, 3, "none")
        0.05
    """
    if gate_index < 1:
        raise ConfigError(f"Expects gate_index >= 1, got {gate_index}.")
    if spending == "none":
        return alpha
    return alpha * 6.0 / (math.pi**2 * gate_index**2)


class ConfidenceSequence:
    """A betting confidence sequence for the mean of paired differences in [-1, 1].

    Args:
        alpha: the error level of each side: the mean falls below ``lower`` at some sample
            count with probability at most ``alpha``, and likewise above ``upper``.
        fractions: the betting fractions of the mixture, each in (0, 1).

    Raises:
        ConfigError: ``alpha`` is not in (0, 1), or a fraction is not in (0, 1).
    """

    def __init__(self, alpha: float = 0.05, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> None:
        if not 0.0 < alpha < 1.0:
            raise ConfigError(f"Expects alpha in (0, 1), got {alpha}.")
        if not fractions or any(not 0.0 < f < 1.0 for f in fractions):
            raise ConfigError(f"Expects betting fractions in (0, 1), got {list(fractions)}.")
        self.alpha = float(alpha)
        self.fractions = np.asarray(fractions, dtype=float)
        self.values: list[float] = []

    @property
    def log_threshold(self) -> float:
        """``log(1 / alpha)``: the log-capital at which a side rejects a mean."""
        return math.log(1.0 / self.alpha)

    def update(self, differences: Iterable[float]) -> None:
        """Add paired differences, in the order they were drawn.

        Raises:
            EvaluatorError: a difference is not a finite number in [-1, 1].
        """
        new = [float(d) for d in differences]
        for d in new:
            if not (math.isfinite(d) and -1.0 - _EDGE <= d <= 1.0 + _EDGE):
                raise EvaluatorError(
                    f"Expects paired differences in [-1, 1], got {d}: an evaluator scored a "
                    "sample outside [0, 1]. Make every evaluator return scores in [0, 1]."
                )
        self.values.extend(min(1.0, max(-1.0, d)) for d in new)

    def _peak_log_capital(self, values: np.ndarray, m: float, side: int) -> float:
        """The largest log-capital the side's mixture reached at any count, betting on ``m``."""
        if side > 0:
            steps = (values - m) / (1.0 + m)
        else:
            steps = (m - values) / (1.0 - m)
        # log of prod_i (1 + f * step_i), every count, every fraction; then the mixture
        paths = np.cumsum(np.log1p(np.outer(steps, self.fractions)), axis=0)
        top = paths.max(axis=1, keepdims=True)
        mixture = top[:, 0] + np.log(np.exp(paths - top).mean(axis=1))
        return float(mixture.max())

    def bounds(self, extra: Sequence[float] = ()) -> Bounds:
        """The running bounds after every difference so far (and ``extra`` ones, if given).

        ``extra`` lets a caller ask "what if the next differences were these?" without
        adding them (the gate's futility check).
        """
        values = np.asarray([*self.values, *extra], dtype=float)
        n = int(values.size)
        if n == 0:
            return Bounds(n=0, mean=0.0, lower=-1.0, upper=1.0)
        threshold = self.log_threshold
        lower = self._edge(values, side=+1, threshold=threshold)
        upper = self._edge(values, side=-1, threshold=threshold)
        mean = float(values.mean())
        return Bounds(n=n, mean=mean, lower=min(lower, mean), upper=max(upper, mean))

    def _edge(self, values: np.ndarray, side: int, threshold: float) -> float:
        """Bisect for the boundary of the means one side has rejected.

        Lower side: the capital falls as ``m`` grows, so the rejected means are ``[-1, L)``;
        returns ``L``. Upper side: rejected means are ``(U, 1]``; returns ``U``.
        """
        if side > 0:
            inside, outside = 1.0 - _EDGE, -1.0 + _EDGE  # inside: not rejected
            if self._peak_log_capital(values, outside, side) < threshold:
                return -1.0
        else:
            inside, outside = -1.0 + _EDGE, 1.0 - _EDGE
            if self._peak_log_capital(values, outside, side) < threshold:
                return 1.0
        if self._peak_log_capital(values, inside, side) >= threshold:
            return inside
        for _ in range(_BISECTIONS):
            middle = (inside + outside) / 2.0
            if self._peak_log_capital(values, middle, side) >= threshold:
                outside = middle
            else:
                inside = middle
        return outside


def verdict(
    bounds: Bounds, min_improvement: float, *, remaining: int, optimistic: Bounds | None = None
) -> Verdict:
    """Decide after a chunk: accept, reject, or score more samples.

    Args:
        bounds: the confidence sequence so far.
        min_improvement: the gain a candidate must clear.
        remaining: test samples not scored yet.
        optimistic: the bounds if every remaining difference were +1; when even these do not
            clear ``min_improvement`` the gate cannot accept any more (it is futile to go on).

    Returns:
        ``accept`` when the lower bound clears ``min_improvement``; ``reject`` when the upper
        bound falls below it, when the split is exhausted without the lower bound clearing,
        or when no outcome of the remaining samples could make it clear; else ``continue``.

    Example:
        >>> verdict(Bounds(n=20, mean=0.5, lower=0.2, upper=0.8), 0.01, remaining=20).verdict
        'accept'
    """
    at = f"after {bounds.n} paired samples (gain {bounds.mean:+.4f}"
    at += f", bounds [{bounds.lower:+.4f}, {bounds.upper:+.4f}])"
    if bounds.lower > min_improvement:
        return Verdict("accept", f"lower bound clears {min_improvement} {at}")
    if bounds.upper < min_improvement:
        return Verdict("reject", f"upper bound is below {min_improvement} {at}")
    if remaining <= 0:
        return Verdict("reject", f"test split exhausted; lower bound does not clear {at}")
    if optimistic is not None and optimistic.lower <= min_improvement:
        return Verdict(
            "reject",
            f"futile: even if all {remaining} remaining samples favoured the candidate the "
            f"lower bound would not clear {min_improvement} {at}",
        )
    return Verdict("continue", "")
