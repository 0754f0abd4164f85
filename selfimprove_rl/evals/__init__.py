"""How good is an output? Evaluators behind one async interface."""

from selfimprove_rl.evals.base import EvalItem, EvalResult, Evaluator, ScoreTable, aggregate_scores

__all__ = ["EvalItem", "EvalResult", "Evaluator", "ScoreTable", "aggregate_scores"]
