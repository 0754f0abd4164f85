"""Which evaluators does a checkpoint call for? Built from its eval constants, one per eval.

Classifier evals become :class:`~selfimprove_rl.evals.phoenix.PhoenixClassifier` judged
through ``judge_llm_kwargs``; exact-match, BLEU and embedding-similarity evals become the code
graders of :mod:`selfimprove_rl.evals.code`. When a classifier's judge is the very model being
optimized, the judge grades its own outputs, and optimizing against it rewards whatever that
model already likes (feedback collapse): this warns with :class:`FeedbackCollapseWarning`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from selfimprove_rl.checkpoint import EvalConstants, EvalKind
from selfimprove_rl.errors import EvaluatorError
from selfimprove_rl.evals.base import Evaluator
from selfimprove_rl.evals.code import Bleu, EmbeddingSimilarity, ExactMatch
from selfimprove_rl.evals.phoenix import PhoenixClassifier


class FeedbackCollapseWarning(UserWarning):
    """A classifier's judge model is the model being optimized: it would grade itself."""


_CODE_GRADERS: dict[EvalKind, Callable[[str, float], Evaluator]] = {
    "exact_match": lambda name, weight: ExactMatch(name=name, weight=weight),
    "bleu": lambda name, weight: Bleu(name=name, weight=weight),
    "embedding_similarity": lambda name, weight: EmbeddingSimilarity(name=name, weight=weight),
}


def build_evaluators(
    constants: Sequence[EvalConstants],
    *,
    judge_llm_kwargs: dict[str, Any] | None,
    target_model: str | None,
) -> list[Evaluator]:
    """Build one evaluator per eval constants, in order.

    Args:
        constants: the checkpoint's eval constants (names must be unique).
        judge_llm_kwargs: how classifier evals reach their judge (``phoenix.evals.LLM``
            keyword arguments, e.g. ``Backend.phoenix_llm_kwargs()``); ``None`` when there is
            no judge, which is fine as long as no eval is a classifier.
        target_model: the model being optimized, to detect a judge grading itself.

    Returns:
        The evaluators, each carrying its eval's name and weight.

    Raises:
        EvaluatorError: duplicate eval names, or a classifier eval without a judge.

    Example:
        >>> from selfimprove_rl.checkpoint import EvalConstants
        >>> build_evaluators([EvalConstants(name="em", kind="exact_match", weight=2.0)],
        ...                  judge_llm_kwargs=None, target_model="sim-large")
        [ExactMatch(name='em', weight=2.0)]
    """
    duplicated = sorted(name for name, n in Counter(c.name for c in constants).items() if n > 1)
    if duplicated:
        raise EvaluatorError(f"Expects unique eval names, got duplicates {duplicated}")
    evaluators: list[Evaluator] = []
    for eval_constants in constants:
        if eval_constants.kind != "classifier":
            evaluators.append(
                _CODE_GRADERS[eval_constants.kind](eval_constants.name, eval_constants.weight)
            )
            continue
        if judge_llm_kwargs is None:
            raise EvaluatorError(
                f"Eval {eval_constants.name!r} is a classifier and needs a judge, got "
                "judge_llm_kwargs=None; pass the judge endpoint's phoenix.evals.LLM keyword "
                "arguments (e.g. Backend.phoenix_llm_kwargs())."
            )
        classifier = PhoenixClassifier(eval_constants, llm_kwargs=judge_llm_kwargs)
        if target_model is not None and classifier.model == target_model:
            warnings.warn(
                FeedbackCollapseWarning(
                    f"Eval {eval_constants.name!r} is judged by {classifier.model!r}, the model "
                    "being optimized: it would grade its own outputs and reward what it already "
                    "prefers (feedback collapse). Use a different judge model (eval_model)."
                ),
                stacklevel=2,
            )
        evaluators.append(classifier)
    return evaluators
