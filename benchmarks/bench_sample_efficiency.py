"""Calls a run needs, stopping on its own, against the seed loop's (coffee/sports, sim-large).

Each policy runs the shipped experiment (``experiments/configs/coffee_sports.toml``: its env,
gate and stopping rule; only the seed and the policy change) through the real runner, and
the run **stops on its own decision**: its stopping rule (stagnation, the test threshold on
the live build's gate estimate, the step budget). Nothing looks at holdout while it runs;
holdout is read afterwards from the run's final report. Counted are the run's target-model
calls up to its stop (``loop_calls``: replays, judges and every gate's paired test samples);
``calls`` adds the final report (the whole test and holdout splits for the promoted and the
baseline build), which measures the result rather than producing it.

The baseline re-implements the seed experiment's loop: every epoch replays the current prompt
and the proposed one on the whole train and test splits with no cache, and keeps the proposal
when it improves the test score. It uses the same rule-induction proposer, so the comparison
isolates the loop (paired minibatches, caching, gating) from the proposal logic. It is
stopped by a holdout probe the moment it reaches the threshold (its probe calls not
counted): the earliest it could stop, which favours the baseline.

Prints one JSON object: per policy and seed, ``ratio`` = loop_calls / the seed loop's calls
and ``holdout``; the goal is ratio <= 0.2 with holdout >= 0.95 in at least 2 of 3 seeds.
When the seed loop never reaches the threshold in its epochs, its calls to threshold are
only known to exceed what it spent (a censored figure): the ratio is then printed as an upper
bound, ``ratio_bound`` = loop_calls / the seed loop's whole spend, with ``ratio`` null; a
run meets the goal only if that bound is <= 0.2 and its own holdout reaches the threshold.

    .venv/bin/python benchmarks/bench_sample_efficiency.py [--seeds 3] [--policies rule_induction]
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
from selfimprove_rl.config import load_config
from selfimprove_rl.evals import Evaluator, ScoreTable
from selfimprove_rl.evals.code import EmbeddingSimilarity
from selfimprove_rl.evals.scoring import score_outcomes
from selfimprove_rl.prompt import PromptState, apply, parse_directives
from selfimprove_rl.replay import Replayer
from selfimprove_rl.runner import ExperimentRunner, run_dir_name
from selfimprove_rl.simulated import make_async_client

MODEL = "sim-large"
CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "coffee_sports.toml"
POLICIES = ("rule_induction",)


class HoldoutProbe:
    """Scores a build on holdout with its own replayer (not counted); the seed loop's probe."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.replayer = Replayer(make_async_client())
        self.evaluator = EmbeddingSimilarity(name="similarity")

    def holdout(self, state: PromptState, holdout: list[Sample]) -> float:
        async def score() -> float:
            report = await self.replayer.replay(holdout, state.to_action(self.checkpoint.action))
            table = await score_outcomes([self.evaluator], holdout, report.outcomes)
            return table.aggregate()

        return asyncio.run(score())


def run_policy(policy: str, seed: int, workdir: Path) -> dict[str, Any]:
    """Run the shipped experiment with ``policy`` and ``seed`` until it stops on its own."""
    config = load_config(CONFIG).with_overrides(**{"seed": seed, "policy.name": policy})
    runner = ExperimentRunner(config, workdir / run_dir_name(config), progress=False)
    summary = runner.run().summary
    registry = runner.registry
    gates = list(registry.decisions)
    return {
        "seed": seed,
        "loop_calls": summary["calls"] - summary["report_calls"],
        "calls": summary["calls"],
        "holdout": summary["holdout"],
        "test": summary["test"],
        "promotions": summary["promotions"],
        "gates": len(gates),
        "mean_gate_samples": (
            statistics.mean(
                d.n if d.n is not None else len(runner.env.unwrapped.splits.test) for d in gates
            )
            if gates
            else None
        ),
        "stopped_because": summary["stopped_because"],
    }


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
    probe = HoldoutProbe(checkpoint)
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
                return {"calls_to_threshold": calls, "calls_spent": calls, "promotions": history}
    return {"calls_to_threshold": None, "calls_spent": calls, "epochs": epoch + 1,
            "promotions": history}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help="e.g. rule_induction,ucb1,population"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    baseline = seed_loop_baseline(args.threshold)
    base_calls = baseline["calls_to_threshold"]
    spent = baseline["calls_spent"]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies.split(","):
            runs = [run_policy(policy, seed, Path(tmp)) for seed in range(args.seeds)]
            for run in runs:
                run["ratio"] = run["loop_calls"] / base_calls if base_calls else None
                run["ratio_with_report"] = run["calls"] / base_calls if base_calls else None
                run["ratio_bound"] = None if base_calls else run["loop_calls"] / spent
                ratio = run["ratio"] if base_calls else run["ratio_bound"]
                run["goal_met"] = bool(ratio <= 0.2 and run["holdout"] >= args.threshold)
            results[policy] = {
                "seeds_meeting_goal": f"{sum(r['goal_met'] for r in runs)}/{len(runs)}",
                "median_ratio": statistics.median(r["ratio"] for r in runs) if base_calls else None,
                "median_ratio_bound": None if base_calls else statistics.median(
                    r["ratio_bound"] for r in runs
                ),
                "median_loop_calls": statistics.median(r["loop_calls"] for r in runs),
                "holdout": [round(r["holdout"], 3) for r in runs],
                "runs": runs,
            }  # fmt: skip
    print(
        json.dumps(
            {
                "benchmark": "sample_efficiency",
                "data": "coffee_sports",
                "model": MODEL,
                "config": str(CONFIG.relative_to(CONFIG.parents[2])),
                "threshold": args.threshold,
                "baseline_seed_loop": baseline,
                "policies": results,
                "goal": "ratio <= 0.2 with holdout >= threshold in >= 2 of 3 seeds",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
