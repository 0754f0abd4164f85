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


GOOD_SOP = (
    "ADD: if input mentions coffee, espresso, latte, beans, brew, roast, barista, crema, cup: "
    'respond "I see you are a person of taste! I like coffee, too."\n'
    'ADD: else: respond "Well, I don\'t like sports."'
)


def quick(candidates: int, seed: int) -> dict[str, Any]:
    """The same comparison without the runner: exact match, a keyword SOP, direct gates.

    A live build with keyword rules (no sentence embeddings needed) answers through
    ``sim-noisy``; each proposal adds a neutral line to it, is replayed on a random train
    minibatch, and is gated (both gates, same test samples, shared cache) only if its
    minibatch reward is positive, as the runner does. Its true gain is measured on holdout.
    """
    from envs.factory import make_prompt_env
    from selfimprove_rl.evals.code import ExactMatch
    from selfimprove_rl.gate import sequential_gate
    from selfimprove_rl.mimic import load_dataset
    from selfimprove_rl.prompt import apply, parse_directives
    from selfimprove_rl.registry import GateConfig, GateDecision, SplitScore, decide

    checkpoint = load_dataset("coffee_sports", model=MODEL)
    env = make_prompt_env(data=checkpoint, model=MODEL, evaluators=[ExactMatch()])
    registry, rng, config = env.registry, np.random.default_rng(seed), GateConfig()
    base = registry.build(registry.live_id)
    good = registry.add(apply(base.state, parse_directives(GOOD_SOP)), parent_id=base.version_id)
    registry.record_decision(
        GateDecision(
            candidate_id=good.version_id,
            baseline_id=base.version_id,
            promoted=True,
            delta=0.0,
            reason="benchmark setup: the keyword SOP is the live build",
        )
    )
    train, test, holdout = env.splits.train, env.splits.test, env.splits.holdout
    rows: list[dict[str, Any]] = []

    def split_score(table: Any) -> SplitScore:
        return SplitScore(aggregate=table.aggregate(), per_eval=table.per_eval(), n=len(test))

    try:
        for _ in range(candidates):
            live = registry.build(registry.live_id)
            line = f"ADD: Reference number {int(rng.integers(10_000, 99_999))}."
            state = apply(live.state, parse_directives(line))
            candidate = registry.add(state, parent_id=live.version_id, origin="neutral")
            minibatch = [train[i] for i in rng.choice(len(train), 16, replace=False)]
            new, old = env.score_samples([candidate.version_id, live.version_id], minibatch)
            if new.aggregate() - old.aggregate() <= 0:
                continue
            new_test, old_test = env.score_samples([candidate.version_id, live.version_id], test)
            full = decide(split_score(new_test), split_score(old_test), config)
            decision = sequential_gate(
                env, candidate.version_id, config, seed=seed, reserve=0
            ).decision
            assert decision is not None
            new_h, old_h = env.score_samples([candidate.version_id, live.version_id], holdout)
            gain = new_h.aggregate() - old_h.aggregate()
            rows.append(
                {
                    "full_split": full.promoted,
                    "sequential": decision.promoted,
                    "n": decision.n,
                    "true_gain": gain,
                    "no_better": gain <= config.min_improvement,
                }
            )
    finally:
        env.close()
    no_better = [r for r in rows if r["no_better"]]
    return {
        "proposed": candidates,
        "gated": len(rows),
        "no_better": len(no_better),
        "mean_sequential_samples": float(np.mean([r["n"] for r in rows])) if rows else None,
        **{
            mode: {
                "no_better_promoted": sum(r[mode] for r in no_better),
                "false_promotion_rate": (
                    sum(r[mode] for r in no_better) / len(no_better) if no_better else None
                ),
            }
            for mode in MODES
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--quick",
        type=int,
        default=0,
        metavar="N",
        help="propose N neutral edits to a keyword SOP scored by exact match, gated directly "
        "(no runner, no sentence embeddings; for a loaded machine)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        quick_results = [quick(args.quick, seed) for seed in range(args.seeds)]
        print(
            json.dumps(
                {
                    "benchmark": "false_promotion_quick",
                    "model": MODEL,
                    "eval": "exact_match",
                    "policy": "neutral edits (a random reference-number line)",
                    "per_seed": quick_results,
                    "target_rate": 0.05,
                },
                indent=2,
            )
        )
        return
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
