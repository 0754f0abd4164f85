"""The betting confidence sequence: coverage at every look, early stops, honest inputs."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from selfimprove_rl.errors import ConfigError, EvaluatorError
from selfimprove_rl.sequential import Bounds, ConfidenceSequence, spent_alpha, verdict


def _paired_bernoulli(rng: np.random.Generator, p_new: float, p_old: float, n: int) -> np.ndarray:
    """Differences of two correlated Bernoulli scores: mostly ties, some wins and losses."""
    shared = rng.random(n)
    return (
        (shared < p_new).astype(float)
        - (shared < p_old).astype(float)
        + ((rng.random(n) < 0.1) * rng.choice([-1.0, 1.0], n) * (shared >= max(p_new, p_old)))
    )


@pytest.mark.parametrize(("p_new", "p_old"), [(0.5, 0.5), (0.7, 0.4), (0.3, 0.6)])
def test_the_mean_stays_inside_the_bounds_at_every_look(p_new: float, p_old: float) -> None:
    """Over all sample counts at once, each side misses the mean at most alpha of the time."""
    alpha, runs, n = 0.1, 300, 40
    rng = np.random.default_rng(7)
    probe = _paired_bernoulli(np.random.default_rng(99), p_new, p_old, 400_000)
    mean = float(probe.mean())
    low_misses = high_misses = 0
    for _ in range(runs):
        sequence = ConfidenceSequence(alpha)
        sequence.update(_paired_bernoulli(rng, p_new, p_old, n))
        bounds = sequence.bounds()  # the running bounds: every count up to n is included
        low_misses += bounds.lower > mean + 0.003
        high_misses += bounds.upper < mean - 0.003
    slack = 3 * math.sqrt(alpha * (1 - alpha) / runs)
    assert low_misses / runs <= alpha + slack
    assert high_misses / runs <= alpha + slack


def test_a_bound_that_ignores_peeking_would_fail_the_coverage_check() -> None:
    """The check above can fail: a per-look normal interval misses far more than alpha."""
    alpha, runs = 0.1, 300
    rng = np.random.default_rng(3)
    misses = 0
    for _ in range(runs):
        d = rng.choice([-1.0, 0.0, 1.0], 40)
        for n in range(8, 41, 8):
            head = d[:n]
            half = 1.2816 * head.std(ddof=1) / math.sqrt(n)
            if head.mean() - half > 0:
                misses += 1
                break
    assert misses / runs > alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def test_a_clear_win_is_accepted_after_few_samples() -> None:
    sequence = ConfidenceSequence(0.05)
    looked = 0
    outcome = None
    while looked < 40:
        sequence.update([1.0] * 4)
        looked += 4
        outcome = verdict(sequence.bounds(), 0.01, remaining=40 - looked)
        if outcome.verdict != "continue":
            break
    assert outcome is not None and outcome.verdict == "accept"
    assert looked <= 12


def test_a_clear_loss_is_rejected_after_few_samples() -> None:
    sequence = ConfidenceSequence(0.05)
    sequence.update([-1.0] * 8)
    bounds = sequence.bounds()
    assert bounds.upper < 0.0
    assert verdict(bounds, 0.01, remaining=32).verdict == "reject"


def test_ties_never_promote_and_end_as_futile() -> None:
    sequence = ConfidenceSequence(0.05)
    sequence.update([0.0] * 24)
    bounds = sequence.bounds()
    assert bounds.lower <= 0.0 <= bounds.upper
    hopeful = verdict(bounds, 0.01, remaining=16, optimistic=sequence.bounds([1.0] * 16))
    assert hopeful.verdict == "continue"  # sixteen straight wins could still clear the bound
    sequence.update([0.0] * 12)
    bounds = sequence.bounds()
    outcome = verdict(bounds, 0.01, remaining=4, optimistic=sequence.bounds([1.0] * 4))
    assert outcome.verdict == "reject" and "futile" in outcome.reason


def test_an_exhausted_split_rejects_unless_the_lower_bound_clears() -> None:
    bounds = Bounds(n=40, mean=0.05, lower=-0.02, upper=0.12)
    outcome = verdict(bounds, 0.01, remaining=0)
    assert outcome.verdict == "reject" and "exhausted" in outcome.reason


def test_smaller_alpha_needs_more_evidence() -> None:
    wins = [1.0, 0.0, 0.0] * 8
    loose, strict = ConfidenceSequence(0.2), ConfidenceSequence(0.001)
    loose.update(wins)
    strict.update(wins)
    assert strict.bounds().lower < loose.bounds().lower


def test_alpha_spending_sums_to_alpha_at_most() -> None:
    assert sum(spent_alpha(0.05, k, "inverse_square") for k in range(1, 10_000)) <= 0.05
    assert spent_alpha(0.05, 2, "inverse_square") < spent_alpha(0.05, 1, "inverse_square")
    with pytest.raises(ConfigError, match=re.escape("Expects gate_index >= 1, got 0.")):
        spent_alpha(0.05, 0, "none")


def test_bad_inputs_get_named_errors() -> None:
    with pytest.raises(ConfigError, match=re.escape("Expects alpha in (0, 1), got 1.5.")):
        ConfidenceSequence(1.5)
    with pytest.raises(ConfigError, match="betting fractions"):
        ConfidenceSequence(0.05, fractions=(0.5, 1.0))
    with pytest.raises(EvaluatorError, match=re.escape("outside [0, 1]")):
        ConfidenceSequence(0.05).update([1.5])
