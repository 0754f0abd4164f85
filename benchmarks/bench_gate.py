"""How often does the gate promote an edit that is no better? Full-split gate vs sequential.

A policy that proposes only *neutral* edits (a line with a random reference number added to
the prompt: it names no reply and no topic, so the simulated model's SOP is unchanged) runs
through the real runner on coffee/sports with ``sim-noisy``, whose replies deviate at random
per request: every edit changes which samples get a deviation, so minibatch rewards and test
gains are pure noise. Every candidate the runner gates (those with a positive minibatch
reward) is then measured against the live build it was gated against on the train and
holdout splits together (160 samples the gate never sees): it is *no-better* when that gain
is at most ``min_improvement``. The figure is the share of no-better gated candidates that
were promoted, for the former full-split gate (``[gate] mode = "full_split"``) and the
sequential gate (the default), side by side, same seeds and same policy draws.

    .venv/bin/python benchmarks/bench_gate.py [--seeds 2] [--steps 40]

Prints one JSON object; ``false_promotion_rate`` per gate is the target figure (<= 0.05).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

import envs  # noqa: F401  (registers the env ids)
from policies.base import BasePolicy, Observation
from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.config import parse_config
from selfimprove_rl.evals.factory import build_evaluators
from selfimprove_rl.registry import Registry
from selfimprove_rl.runner import load_checkpoint_for, run_experiment

MODEL = "sim-noisy"
MODES = ("full_split", "sequential")


class NeutralEditPolicy(BasePolicy):
    """Adds a line with a random reference number: an edit that cannot make the prompt better."""

    name = "neutral_edits"

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return a directive adding one neutral line to the prompt's default block."""
        return f"ADD: Reference number {int(self.rng.integers(10_000, 99_999))}."


def _config(mode: str, seed: int, steps: int) -> Any:
    return parse_config(
        {
            "name": f"false-promotion-{mode}",
            "seed": seed,
            "data": {"kind": "dataset", "path": "coffee_sports"},
            "target": {"model": MODEL},
            "policy": {"name": f"{__name__}:NeutralEditPolicy"},
            "env": {"minibatch_size": 16, "max_steps": 10},
            "gate": {"mode": mode},
            "stopping": {"max_total_steps": steps, "stagnation_steps": None},
        }
    )


def true_gains(run_dir: Path, config: Any, cache: ResponseCache) -> list[dict[str, Any]]:
    """Each gated candidate's gain over the live build it faced, on train + holdout."""
    registry = Registry(run_dir / "versions.jsonl")
    checkpoint = load_checkpoint_for(config, progress=False)
    evaluators = build_evaluators(
        checkpoint.eval_constants, judge_llm_kwargs=None, target_model=MODEL
    )
    env = gymnasium.make(
        "selfimprove_rl/PromptEnv-v0",
        data=checkpoint,
        model=MODEL,
        backend=config.backend,
        evaluators=evaluators,
        registry=registry,
        cache=cache,
    ).unwrapped
    rows = []
    try:
        per_version: dict[str, np.ndarray] = {}

        def scores(version_id: str) -> np.ndarray:
            if version_id not in per_version:
                parts = [
                    env.evaluate_version(version_id, s)[1].per_sample()
                    for s in ("train", "holdout")
                ]
                per_version[version_id] = np.asarray(parts[0] + parts[1])
            return per_version[version_id]

        for decision in registry.decisions:
            gain = float((scores(decision.candidate_id) - scores(decision.baseline_id)).mean())
            rows.append(
                {
                    "candidate": decision.candidate_id,
                    "promoted": decision.promoted,
                    "test_gain": decision.delta,
                    "n": decision.n,
                    "true_gain": gain,
                    "no_better": gain <= config.gate.min_improvement,
                }
            )
    finally:
        env.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = ResponseCache(Path(tmp) / "measure.sqlite")
        for mode in MODES:
            gated: list[dict[str, Any]] = []
            calls = 0
            for seed in range(args.seeds):
                config = _config(mode, seed, args.steps)
                result = run_experiment(config, out=Path(tmp) / f"{mode}-{seed}", progress=False)
                calls += int(result.summary["calls"]) - int(result.summary["report_calls"])
                gated += true_gains(result.run_dir, config, cache)
            no_better = [row for row in gated if row["no_better"]]
            promoted = [row for row in no_better if row["promoted"]]
            results[mode] = {
                "gated": len(gated),
                "no_better": len(no_better),
                "no_better_promoted": len(promoted),
                "false_promotion_rate": len(promoted) / len(no_better) if no_better else None,
                "promoted_all": sum(row["promoted"] for row in gated),
                "mean_test_samples_per_gate": (
                    float(np.mean([row["n"] or 40 for row in gated])) if gated else None
                ),
                "loop_calls": calls,
            }
        cache.close()
    print(
        json.dumps(
            {
                "benchmark": "false_promotion",
                "data": "coffee_sports",
                "model": MODEL,
                "policy": "neutral edits (a random reference-number line)",
                "seeds": args.seeds,
                "steps_per_run": args.steps,
                "gates": results,
                "target_rate": 0.05,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
