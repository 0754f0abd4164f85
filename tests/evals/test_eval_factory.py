"""build_evaluators: one evaluator per eval, and the feedback-collapse warning."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from selfimprove_rl.checkpoint import EvalConstants
from selfimprove_rl.errors import EvaluatorError
from selfimprove_rl.evals import (
    Bleu,
    EmbeddingSimilarity,
    Evaluator,
    ExactMatch,
    FeedbackCollapseWarning,
    PhoenixClassifier,
    build_evaluators,
)

JUDGED = EvalConstants(
    name="correctness",
    template="Output: {output}\nReference: {reference}",
    choices={"correct": 1.0, "incorrect": 0.0},
    eval_model="sim-large",
    weight=2.0,
)
CODE = [
    EvalConstants(name="em", kind="exact_match", weight=0.5),
    EvalConstants(name="bleu", kind="bleu"),
    EvalConstants(name="similarity", kind="embedding_similarity"),
]


def test_one_evaluator_per_eval_in_order(judge: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluators = build_evaluators(
            [*CODE, JUDGED], judge_llm_kwargs=judge.llm_kwargs(), target_model="sim-small"
        )
    assert [type(e) for e in evaluators] == [
        ExactMatch,
        Bleu,
        EmbeddingSimilarity,
        PhoenixClassifier,
    ]
    assert [(e.name, e.weight) for e in evaluators] == [
        ("em", 0.5),
        ("bleu", 1.0),
        ("similarity", 1.0),
        ("correctness", 2.0),
    ]
    assert all(isinstance(e, Evaluator) for e in evaluators)


def test_a_judge_grading_its_own_model_warns(judge: Any) -> None:
    with pytest.warns(FeedbackCollapseWarning, match="feedback collapse"):
        build_evaluators([JUDGED], judge_llm_kwargs=judge.llm_kwargs(), target_model="sim-large")


def test_classifiers_need_a_judge_and_names_are_unique() -> None:
    with pytest.raises(EvaluatorError, match="needs a judge"):
        build_evaluators([JUDGED], judge_llm_kwargs=None, target_model=None)
    assert len(build_evaluators(CODE, judge_llm_kwargs=None, target_model=None)) == 3
    with pytest.raises(EvaluatorError, match=r"duplicates \['em'\]"):
        build_evaluators([CODE[0], CODE[0]], judge_llm_kwargs=None, target_model=None)
