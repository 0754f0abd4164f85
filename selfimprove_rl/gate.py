"""Does a candidate replace the live build? The sequential promotion gate of a run.

The gate scores the candidate and the live build on the *same* test samples, a chunk
(``[gate] chunk_size``) at a time, in a random order drawn for this gate, and after every
chunk asks the confidence sequence of :mod:`selfimprove_rl.sequential` about the mean paired
gain ``score(candidate) - score(live)``:

* **accept** (promote) when its lower bound clears ``min_improvement`` and no eval regressed by
  more than ``max_eval_regression`` on the samples used;
* **reject** when its upper bound falls below ``min_improvement``, when no outcome of the
  remaining samples could still make the lower bound clear it (futility), or when the split
  is exhausted without the lower bound clearing it.

A clear win or loss is decided on a few samples; a close call uses the whole split, and is
rejected unless the bound clears. The decision goes into the registry with the samples used
(``n``), the bounds, the error level and the calls the gate sent; those calls count towards
the run's call budget like any other (:class:`~envs.spend.SpendMeter`).

**What "test score" means now.** The gate no longer scores builds on the whole test split:
a decision's ``delta`` is the mean paired gain on the samples it used, and its
``candidate_score`` / ``live_score`` the two builds' means there. A live build's test score
during a run (the step log's ``live_test``, the ``test_threshold`` stopping rule) is that
estimate (:meth:`~selfimprove_rl.registry.Registry.test_estimate`); the final report still
scores the promoted and the baseline build on the whole test and holdout splits.

**Test reuse.** Every candidate of a run is gated on the same test split, and a policy may
adapt to earlier outcomes; a fixed-level test repeated k times would promote a no-better
candidate with probability up to k times its level. Each gate therefore draws a fresh random
order of the test samples (seeded by the run seed and the gate's number, so a resumed run
redoes a gate identically) and runs at a *spent* level: the k-th gate against the same live
build gets ``alpha * 6 / (pi^2 k^2)`` (``alpha_spending = "per_live_build"``, the default).
The levels of one live build's gates sum to ``alpha``, so by a union bound the chance that it
is ever replaced by a build not better by ``min_improvement`` is at most ``alpha``. The union
bound is over a sequence the test split cannot steer: while a build is live, a policy learns
nothing about the test split (gate outcomes are not in its transitions, and a rejection
leaves the live build as it was), so its candidates are the ones it would propose anyway.
Only a promotion reveals something (which candidate won), and each promotion starts a new
budget: the expected number of false promotions in a run is at most ``alpha`` times the
number of builds that were live, and a run that keeps improving keeps its power.
``"per_run"`` counts gates over the whole run (the chance of *any* false promotion in the
run is at most ``alpha``); ``"none"`` gives every gate ``alpha``.
This was preferred to a reusable holdout (Thresholdout): that answers with noised scores and
a budget of overfitting queries, which would blur the clear wins the sequential test stops
early on, while alpha spending keeps every decision an exact, auditable bound.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from selfimprove_rl.evals import ScoreTable
from selfimprove_rl.registry import GateConfig, GateDecision, Registry
from selfimprove_rl.sequential import ConfidenceSequence, spent_alpha, verdict


class GateOutcome(NamedTuple):
    """A sequential gate's decision (``None`` if it never started) and any budget refusal."""

    decision: GateDecision | None
    refusal: str | None


def gate_index(registry: Registry, config: GateConfig) -> int:
    """The number (1-based) the next gate gets under ``config.alpha_spending``."""
    if config.alpha_spending == "per_live_build":
        return registry.gates_against(registry.live_id) + 1
    return len(registry.decisions) + 1


def sample_order(n: int, *, seed: int, gate_number: int) -> list[int]:
    """The random order of the test samples for a run's ``gate_number``-th gate.

    Example:
        >>> sample_order(5, seed=0, gate_number=1) == sample_order(5, seed=0, gate_number=1)
        True
        >>> sorted(sample_order(5, seed=0, gate_number=2))
        [0, 1, 2, 3, 4]
    """
    rng = np.random.default_rng([int(seed), int(gate_number)])
    return [int(i) for i in rng.permutation(n)]


class _Sums:
    """Running per-eval sums of one build over the gate's samples."""

    def __init__(self) -> None:
        self.per_eval: dict[str, float] = {}
        self.total = 0.0
        self.n = 0

    def add(self, table: ScoreTable) -> list[float]:
        per_sample = table.per_sample()
        for name, values in table.scores.items():
            self.per_eval[name] = self.per_eval.get(name, 0.0) + sum(values)
        self.total += sum(per_sample)
        self.n += len(per_sample)
        return per_sample

    def means(self) -> dict[str, float]:
        return {name: value / self.n for name, value in self.per_eval.items()} if self.n else {}


def sequential_gate(
    env: Any,
    candidate_id: str,
    config: GateConfig,
    *,
    seed: int,
    reserve: int,
) -> GateOutcome:
    """Run the sequential gate on ``candidate_id`` against the live build, and record it.

    Args:
        env: the unwrapped env (``registry``, ``splits``, ``spend``, ``calls_to_score``,
            ``score_samples``).
        candidate_id: the version to gate.
        config: the gate's rule and error level.
        seed: the run's seed (with the gate's number, it fixes the order of test samples).
        reserve: calls to keep back for the final report; a chunk that would eat into them
            is not scored.

    Returns:
        The decision (recorded in the registry), or ``None`` when not even the first chunk
        fits the budget; and why the budget stopped the gate, if it did (a gate stopped
        after some chunks is recorded as a rejection saying so).
    """
    registry: Registry = env.registry
    live_id = registry.live_id
    test = list(env.splits.test)
    index = gate_index(registry, config)
    alpha = spent_alpha(config.alpha, index, _spending(config))
    order = sample_order(len(test), seed=seed, gate_number=len(registry.decisions) + 1)
    sequence = ConfidenceSequence(alpha)
    if test and sequence.bounds([1.0] * len(test)).lower <= config.min_improvement:
        warnings.warn(
            f"The test split has {len(test)} samples: even if the candidate won on every one, "
            f"the gate at alpha={alpha:.2g} could not clear min_improvement="
            f"{config.min_improvement}, so it cannot promote. Use more data or a larger test "
            'share, a larger [gate] alpha, or [gate] mode = "full_split".',
            stacklevel=2,
        )
    candidate, live = _Sums(), _Sums()
    states = [registry.build(v).state for v in (candidate_id, live_id)]
    calls_before = env.spend.usage["calls"]
    refusal: str | None = None
    reason = ""
    promoted = False
    for start in range(0, len(order), config.chunk_size):
        chunk = [test[i] for i in order[start : start + config.chunk_size]]
        needed = sum(int(env.calls_to_score(state, chunk)) for state in states)
        if not env.spend.affordable(needed, reserve=reserve):
            left = (env.config.max_calls or 0) - env.spend.usage["calls"]
            refusal = (
                f"call budget: the gate of {candidate_id} needs up to {needed} calls for its next "
                f"{len(chunk)} paired test samples and the final report up to {reserve}, but "
                f"{left} are left of max_calls={env.config.max_calls}"
            )
            if sequence.values:
                reason = "undecided when the call budget ran out (rejected)"
            break
        tables = env.score_samples([candidate_id, live_id], chunk)
        gains = [c - b for c, b in zip(candidate.add(tables[0]), live.add(tables[1]), strict=True)]
        sequence.update(gains)
        remaining = len(order) - len(sequence.values)
        bounds = sequence.bounds()
        optimistic = sequence.bounds([1.0] * remaining) if remaining else None
        outcome = verdict(
            bounds, config.min_improvement, remaining=remaining, optimistic=optimistic
        )
        if outcome.verdict != "continue":
            promoted, reason = outcome.verdict == "accept", outcome.reason
            break
    if not sequence.values:
        return GateOutcome(None, refusal)
    bounds = sequence.bounds()
    regressions = _regressions(candidate.means(), live.means(), config.max_eval_regression)
    if promoted and regressions:
        worst = max(regressions, key=lambda name: regressions[name])
        promoted = False
        reason = (
            f"eval {worst!r} regressed by {regressions[worst]:.4f} on the gate's "
            f"{bounds.n} samples (tolerance {config.max_eval_regression})"
        )
    decision = GateDecision(
        candidate_id=candidate_id,
        baseline_id=live_id,
        promoted=promoted,
        delta=bounds.mean,
        regressions=regressions,
        reason=reason,
        method="sequential",
        n=bounds.n,
        n_split=len(test),
        lower=bounds.lower,
        upper=bounds.upper,
        alpha=alpha,
        gate_index=index,
        candidate_score=candidate.total / candidate.n,
        live_score=live.total / live.n,
        calls=env.spend.usage["calls"] - calls_before,
    )
    return GateOutcome(registry.record_decision(decision), refusal)


def promotion_ceiling(
    live_scores: Sequence[float], registry: Registry, config: GateConfig, *, seed: int
) -> str:
    """Why the next gate could promote no candidate against the live build (``""``: it could).

    ``live_scores`` are the live build's per-sample scores on the whole test split, in split
    order. No candidate scores above 1 on a sample, so none gains more than ``1 - s`` on it:
    the candidate scoring 1 everywhere is the best any could be, and the gate's bounds only
    rise with the gains. If even that candidate would not be promoted — in sequential mode by
    the next gate (its sample order and spent alpha), in full-split mode by the mean gain
    against ``min_improvement`` — no candidate would, and further steps cannot change the live
    build: the test split is too small to certify what is left to gain.
    """
    headroom = [1.0 - min(1.0, max(0.0, float(s))) for s in live_scores]
    if not headroom:
        return ""
    mean = sum(headroom) / len(headroom)
    if config.mode != "sequential":
        if mean >= config.min_improvement and mean > 0:
            return ""
        return (
            f"the live build {registry.live_id} leaves {mean:.4f} to gain on the test split, "
            f"below min_improvement={config.min_improvement}: no candidate can be promoted"
        )
    gate_number = len(registry.decisions) + 1
    alpha = spent_alpha(config.alpha, gate_index(registry, config), _spending(config))
    order = sample_order(len(headroom), seed=seed, gate_number=gate_number)
    sequence = ConfidenceSequence(alpha)
    sequence.update(headroom[i] for i in order)
    lower = sequence.bounds().lower
    if lower > config.min_improvement:
        return ""
    return (
        f"the live build {registry.live_id} leaves {mean:.4f} to gain on the "
        f"{len(headroom)} test samples; even a candidate scoring 1 on every one would reach a "
        f"lower bound of {lower:+.4f} at the next gate (alpha={alpha:.2g}), not above "
        f"min_improvement={config.min_improvement}: no candidate can be promoted"
    )


def _spending(config: GateConfig) -> Any:
    return "none" if config.alpha_spending == "none" else "inverse_square"


def _regressions(
    candidate: dict[str, float], live: dict[str, float], tolerance: float
) -> dict[str, float]:
    return {
        name: live[name] - score
        for name, score in candidate.items()
        if name in live and live[name] - score > tolerance
    }
