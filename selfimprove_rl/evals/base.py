"""How good is an output? The one evaluator interface and the score table it fills.

Invariants every evaluator keeps (like GEPA's ``evaluate``):

* ``evaluate(items)`` returns exactly one :class:`EvalResult` per item, in the same order;
* scores lie in [0, 1], higher is better;
* a sample the evaluator cannot score gets ``score=0.0`` and an ``error`` string (counted,
  never raised); only systemic faults (a misconfigured evaluator) raise ``EvaluatorError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from selfimprove_rl.checkpoint import Sample


class EvalItem(NamedTuple):
    """One thing to score: a logged sample and the new output produced for it."""

    sample: Sample
    output: str


class EvalResult(BaseModel):
    """One evaluator's verdict on one sample."""

    model_config = ConfigDict(frozen=True)

    name: str
    sample_id: str
    score: float = Field(ge=0.0, le=1.0)
    label: str | None = None
    explanation: str | None = None
    error: str | None = None


@runtime_checkable
class Evaluator(Protocol):
    """Scores new outputs for logged samples.

    Must set ``name`` (unique among a run's evaluators) and ``weight`` (its share of the
    aggregate score).
    """

    name: str
    weight: float

    async def evaluate(self, items: Sequence[EvalItem]) -> list[EvalResult]:
        """Return one result per item, in order (see the module invariants)."""
        ...


class ScoreTable(BaseModel):
    """Per-sample scores of one prompt version on one set of samples, for every evaluator.

    A sample whose replay failed scores 0 on every eval and is listed in ``failed``: it
    counts against the version, and it is visible.
    """

    model_config = ConfigDict(frozen=True)

    sample_ids: list[str]
    scores: dict[str, list[float]] = Field(description="eval name -> score per sample")
    weights: dict[str, float]
    failed: dict[str, str] = Field(default_factory=dict, description="sample id -> error")
    labels: dict[str, list[str | None]] = Field(default_factory=dict)
    explanations: dict[str, list[str | None]] = Field(default_factory=dict)
    eval_errors: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="eval name -> sample id -> error, for outputs an evaluator could not score",
    )

    def per_eval(self) -> dict[str, float]:
        """Mean score of each eval over the samples (0 for an empty table)."""
        return {
            name: (sum(values) / len(values) if values else 0.0)
            for name, values in self.scores.items()
        }

    def per_sample(self) -> list[float]:
        """Weighted score of each sample across evals."""
        total = sum(self.weights.values()) or 1.0
        return [
            sum(self.weights[name] * values[i] for name, values in self.scores.items()) / total
            for i in range(len(self.sample_ids))
        ]

    def aggregate(self) -> float:
        """Weighted mean over evals of each eval's mean score."""
        means = self.per_eval()
        total = sum(self.weights[name] for name in means) or 1.0
        return sum(self.weights[name] * mean for name, mean in means.items()) / total


def aggregate_scores(per_eval: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Combine per-eval mean scores into one number by weight.

    Example:
        >>> aggregate_scores({"a": 1.0, "b": 0.0}, {"a": 3.0, "b": 1.0})
        0.75
    """
    total = sum(weights.get(name, 1.0) for name in per_eval) or 1.0
    return sum(weights.get(name, 1.0) * score for name, score in per_eval.items()) / total
