"""How good is an output? Evaluators behind one async interface."""

from selfimprove_rl.evals.base import EvalItem, EvalResult, Evaluator, ScoreTable, aggregate_scores
from selfimprove_rl.evals.code import (
    Bleu,
    EmbeddingSimilarity,
    ExactMatch,
    ReferenceGrader,
    normalize_text,
)
from selfimprove_rl.evals.factory import FeedbackCollapseWarning, build_evaluators
from selfimprove_rl.evals.phoenix import PhoenixClassifier, choice_scores
from selfimprove_rl.evals.scoring import score_outcomes

__all__ = [
    "Bleu",
    "EmbeddingSimilarity",
    "EvalItem",
    "EvalResult",
    "Evaluator",
    "ExactMatch",
    "FeedbackCollapseWarning",
    "PhoenixClassifier",
    "ReferenceGrader",
    "ScoreTable",
    "aggregate_scores",
    "build_evaluators",
    "choice_scores",
    "normalize_text",
    "score_outcomes",
]
