"""How did a version score? Every evaluator on every replayed output, gathered in one table.

Invariants (the reward rests on them): a sample whose replay failed scores 0 on every eval
and is listed in ``ScoreTable.failed``; evaluators see only successful outputs; a sample an
evaluator could not score keeps that evaluator's score of 0 and its error is listed in
``ScoreTable.eval_errors``. All evaluators run concurrently.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from selfimprove_rl.checkpoint import Sample
from selfimprove_rl.errors import EvaluatorError
from selfimprove_rl.evals.base import EvalItem, EvalResult, Evaluator, ScoreTable
from selfimprove_rl.replay import ReplayOutcome


async def score_outcomes(
    evaluators: Sequence[Evaluator],
    samples: Sequence[Sample],
    outcomes: Sequence[ReplayOutcome],
) -> ScoreTable:
    """Score the replayed outputs of ``samples`` with every evaluator.

    Args:
        evaluators: the evaluators (unique names).
        samples: the samples that were replayed.
        outcomes: their replay outcomes, in the same order.

    Returns:
        Per-sample scores, labels and explanations of every eval, with failures listed.

    Raises:
        EvaluatorError: mismatched samples and outcomes, duplicate evaluator names, or an
            evaluator that broke its contract (wrong number or order of results).
    """
    if len(samples) != len(outcomes):
        raise EvaluatorError(
            f"Expects one replay outcome per sample, got {len(outcomes)} outcomes for "
            f"{len(samples)} samples"
        )
    for sample, outcome in zip(samples, outcomes, strict=True):
        if sample.sample_id != outcome.sample_id:
            raise EvaluatorError(
                f"Expects outcomes in sample order, got outcome {outcome.sample_id!r} for sample "
                f"{sample.sample_id!r}"
            )
    names = [evaluator.name for evaluator in evaluators]
    duplicated = sorted(name for name, n in Counter(names).items() if n > 1)
    if duplicated:
        raise EvaluatorError(f"Expects unique evaluator names, got duplicates {duplicated}")

    succeeded = [i for i, outcome in enumerate(outcomes) if outcome.ok]
    items = [EvalItem(samples[i], outcomes[i].text) for i in succeeded]
    if items:
        per_eval = await asyncio.gather(*(evaluator.evaluate(items) for evaluator in evaluators))
    else:
        per_eval = [[] for _ in evaluators]

    count = len(samples)
    scores: dict[str, list[float]] = {}
    labels: dict[str, list[str | None]] = {}
    explanations: dict[str, list[str | None]] = {}
    eval_errors: dict[str, dict[str, str]] = {}
    for evaluator, results in zip(evaluators, per_eval, strict=True):
        _check_results(evaluator.name, results, items)
        scores[evaluator.name] = [0.0] * count
        labels[evaluator.name] = [None] * count
        explanations[evaluator.name] = [None] * count
        for index, result in zip(succeeded, results, strict=True):
            scores[evaluator.name][index] = result.score
            labels[evaluator.name][index] = result.label
            explanations[evaluator.name][index] = result.explanation
            if result.error is not None:
                eval_errors.setdefault(evaluator.name, {})[result.sample_id] = result.error
    return ScoreTable(
        sample_ids=[sample.sample_id for sample in samples],
        scores=scores,
        weights={evaluator.name: evaluator.weight for evaluator in evaluators},
        failed={o.sample_id: o.error or "replay failed" for o in outcomes if not o.ok},
        labels=labels,
        explanations=explanations,
        eval_errors=eval_errors,
    )


def _check_results(name: str, results: Sequence[EvalResult], items: Sequence[EvalItem]) -> None:
    if len(results) != len(items):
        raise EvaluatorError(
            f"Evaluator {name!r} returned {len(results)} results for {len(items)} outputs; "
            "an evaluator must return exactly one result per item, in order"
        )
    for result, item in zip(results, items, strict=True):
        if result.sample_id != item.sample.sample_id:
            raise EvaluatorError(
                f"Evaluator {name!r} returned a result for {result.sample_id!r} where "
                f"{item.sample.sample_id!r} was expected; results must follow the item order"
            )
