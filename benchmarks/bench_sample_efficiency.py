"""Target-model calls each policy needs to reach holdout >= 0.95 (coffee/sports, sim-large).

Shipped policies run through the real runner (paired minibatch rewards, response cache, test
gate). After every promotion the promoted build is scored on holdout by a *separate*
measurement replayer, whose calls are not counted: only the run's own target-model calls
(replay and judge) are. The run stops as soon as a promoted build reaches the threshold.

The baseline re-implements the seed experiment's loop: every epoch replays the current prompt
and the proposed one on the whole train and test splits with no cache, and keeps the proposal
when it improves the test score. It uses the same rule-induction proposer, so the comparison
isolates the loop (paired minibatches, caching, gating) from the proposal logic.

Prints one JSON object; `ratio_best_to_baseline` is the target figure (<= 0.2).

    .venv/bin/python benchmarks/bench_sample_efficiency.py [--seeds 3] [--threshold 0.95]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from envs.factory import load_checkpoint_source
from envs.observation import build_observation
from policies.rule_induction import RuleInductionProposer
from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Checkpoint, Sample
from selfimprove_rl.config import parse_config
from selfimprove_rl.evals import Evaluator, ScoreTable
from selfimprove_rl.evals.code import EmbeddingSimilarity
from selfimprove_rl.evals.scoring import score_outcomes
from selfimprove_rl.prompt import PromptState, apply, parse_directives
from selfimprove_rl.replay import Replayer
from selfimprove_rl.runner import ExperimentRunner, run_dir_name
from selfimprove_rl.simulated import make_async_client

MODEL = "sim-large"
POLICIES = ("rule_induction", "ucb1", "successive_halving", "population")


class HoldoutProbe:
    """Scores each promoted build on holdout with its own replayer (not counted)."""

    def __init__(self, checkpoint: Checkpoint, threshold: float) -> None:
        self.checkpoint = checkpoint
        self.threshold = threshold
        self.replayer = Replayer(make_async_client())
        self.evaluator = EmbeddingSimilarity(name="similarity")
        self.reached_at: int | None = None
        self.history: list[dict[str, Any]] = []

    def holdout(self, state: PromptState, holdout: list[Sample]) -> float:
        async def score() -> float:
            report = await self.replayer.replay(holdout, state.to_action(self.checkpoint.action))
            table = await score_outcomes([self.evaluator], holdout, report.outcomes)
            return table.aggregate()

        return asyncio.run(score())

    def on_promotion(self, run: ExperimentRunner, version_id: str, decision: Any) -> None:
        env = run.env.unwrapped
        score = self.holdout(run.registry.build(version_id).state, env.splits.holdout)
        calls = env.usage["calls"]
        self.history.append({"version": version_id, "holdout": score, "calls": calls})
        if score >= self.threshold and self.reached_at is None:
            self.reached_at = calls

    def should_stop(self, run: ExperimentRunner) -> str:
        return "holdout threshold reached" if self.reached_at is not None else ""

    def on_finish(self, run: ExperimentRunner, summary: dict[str, Any]) -> None:
        return None


def run_policy(policy: str, seed: int, threshold: float, workdir: Path) -> dict[str, Any]:
    config = parse_config(
        {
            "name": "efficiency",
            "seed": seed,
            "data": {"kind": "dataset", "path": "coffee_sports"},
            "target": {"model": MODEL},
            "policy": {"name": policy},
            "env": {"minibatch_size": 24, "max_steps": 10, "observe_on_no_op": True},
            "stopping": {"max_total_steps": 40, "stagnation_steps": 40},
        }
    )
    checkpoint = load_checkpoint_source("coffee_sports", model=MODEL)
    env_splits = checkpoint.split(seed=0)
    probe = HoldoutProbe(checkpoint, threshold)
    runner = ExperimentRunner(
        config, workdir / run_dir_name(config), progress=False, callbacks=[probe]
    )
    runner.run()
    assert len(env_splits.holdout) == len(runner.env.unwrapped.splits.holdout)
    return {"calls_to_threshold": probe.reached_at, "promotions": probe.history}


def _rows(checkpoint: Checkpoint, samples: list[Sample], table: ScoreTable, outputs: list[str]):
    per_sample = table.per_sample()
    return [
        {
            "sample_id": s.sample_id,
            "input": s.input_text,
            "output": out,
            "reference": s.reference,
            "score": per_sample[i],
            "failed": s.sample_id in table.failed,
        }
        for i, (s, out) in enumerate(zip(samples, outputs, strict=True))
    ]


def seed_loop_baseline(threshold: float, epochs: int = 20) -> dict[str, Any]:
    """The seed experiment's loop: full train + test replays every epoch, no cache."""
    checkpoint = load_checkpoint_source("coffee_sports", model=MODEL)
    splits = checkpoint.split(seed=0)
    evaluators: list[Evaluator] = [EmbeddingSimilarity(name="similarity")]
    client = make_async_client()
    probe = HoldoutProbe(checkpoint, threshold)
    proposer = RuleInductionProposer()
    calls = 0

    async def evaluate(state: PromptState, samples: list[Sample]) -> tuple[ScoreTable, list[str]]:
        nonlocal calls
        replayer = Replayer(client, cache=ResponseCache())  # a fresh cache: nothing is reused
        report = await replayer.replay(samples, state.to_action(checkpoint.action))
        calls += report.usage.calls
        table = await score_outcomes(evaluators, samples, report.outcomes)
        return table, [o.text for o in report.outcomes]

    state = PromptState.from_text(checkpoint.action.system_prompt, model=MODEL)
    history = []
    for epoch in range(epochs):
        train_table, outputs = asyncio.run(evaluate(state, splits.train))
        test_table, _ = asyncio.run(evaluate(state, splits.test))
        observation = build_observation(state, f"epoch{epoch}", [test_table.aggregate()])
        info = {
            "examples": _rows(checkpoint, splits.train, train_table, outputs),
            "current_version_id": f"epoch{epoch}",
        }
        candidates = proposer.propose(observation, info, k=1)
        if not candidates:
            break
        edits = candidates[0].edits
        new_state = apply(state, parse_directives(edits) if isinstance(edits, str) else edits)
        asyncio.run(evaluate(new_state, splits.train))
        new_test, _ = asyncio.run(evaluate(new_state, splits.test))
        improved = new_test.aggregate() > test_table.aggregate()
        proposer.feedback(
            candidates[0], new_test.aggregate() - test_table.aggregate(), improved, {}
        )
        if improved:
            state = new_state
            score = probe.holdout(state, splits.holdout)
            history.append({"epoch": epoch, "holdout": score, "calls": calls})
            if score >= threshold:
                return {"calls_to_threshold": calls, "promotions": history}
    return {"calls_to_threshold": None, "promotions": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--policies", default=",".join(POLICIES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    baseline = seed_loop_baseline(args.threshold)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies.split(","):
            runs = [
                run_policy(policy, seed, args.threshold, Path(tmp)) for seed in range(args.seeds)
            ]
            reached = [r["calls_to_threshold"] for r in runs if r["calls_to_threshold"] is not None]
            results[policy] = {
                "reached": f"{len(reached)}/{len(runs)}",
                "median_calls_to_threshold": statistics.median(reached) if reached else None,
                "calls_per_seed": [r["calls_to_threshold"] for r in runs],
            }
    best_policy, best = min(
        ((name, r["median_calls_to_threshold"]) for name, r in results.items()
         if r["median_calls_to_threshold"] is not None),
        key=lambda item: item[1],
        default=(None, None),
    )  # fmt: skip
    base_calls = baseline["calls_to_threshold"]
    print(
        json.dumps(
            {
                "benchmark": "sample_efficiency",
                "data": "coffee_sports",
                "model": MODEL,
                "threshold": args.threshold,
                "baseline_seed_loop": baseline,
                "policies": results,
                "best_policy": best_policy,
                "ratio_best_to_baseline": (best / base_calls) if best and base_calls else None,
                "target_ratio": 0.2,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
