"""Programs: which bootstrap remedy works, and one coach editing both nodes vs two agents.

The shipped two-call pipeline (``support_pipeline``: a router labels the ``support_intents``
message, a responder answers from the label alone) starts from blank prompts on the
simulated model. Every run goes through ``selfimprove-rl``'s runner (gate on test, report on
holdout) and is stopped by the same budget of model calls (replay, counterfactual and gate
calls all count).

Part ``bootstrap`` — one coach (``program_coach``, per-node ``rule_induction`` coaches; the gate
scores both builds on the whole test split of 32, as ``pipeline.toml`` does):

* ``alternate/strict``   one node per step, accept only end-to-end improvements;
* ``alternate/ties``     one node per step, up to ``tie_moves`` zero-reward moves in a row;
* ``alternate/shaping``  one node per step, reward += ``node_shaping`` x node-eval delta;
* ``joint/strict``       every node proposes each step, the edits go out together.

Part ``agents`` — at the same budget: one coach editing both nodes (``alternate/ties``, the
chosen remedy, and ``joint/strict``) vs two agents (``agent_team`` on
``selfimprove_rl/ProgramAgents-v0``, difference rewards; strict, and with bounded ties).

Printed per setup: runs, final test and holdout (end to end, mean and 95% interval), the
router's label accuracy on test, calls spent, and calls until the live build's end-to-end
test score first reached each threshold (mean over the runs that reached it, and how many).

Part ``ceiling`` — no optimizer: what fixed router prompts label on holdout (splits 0 to
``--seeds`` - 1), on ``sim-large`` and on ``sim-max-cue`` (its earlier reading): a rule per
label, k random train messages per label as chat-turn demonstrations (with and without the
rules), and every train message as a demonstration. It bounds what any coach can reach
end to end with this router on the simulated model.

    .venv/bin/python benchmarks/bench_programs.py                       # the loop parts, 3 seeds
    .venv/bin/python benchmarks/bench_programs.py --part agents --seeds 5 --budget 4000
    .venv/bin/python benchmarks/bench_programs.py --part ceiling        # fixed router prompts
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from envs.program_factory import load_program_source
from selfimprove_rl.compare import summarise_run
from selfimprove_rl.config import parse_config
from selfimprove_rl.fileio import atomic_write_text
from selfimprove_rl.runner import run_experiment
from selfimprove_rl.simulated import SIMULATED_MODELS, SimulatedChatModel
from selfimprove_rl.stats import t_interval

NODE_POLICY = {"policy": "rule_induction"}
SETUPS: dict[str, dict[str, Any]] = {
    "alternate/strict": {"policy": {"mode": "alternate"}, "env": {}},
    "alternate/ties": {"policy": {"mode": "alternate"}, "env": {"tie_moves": 3}},
    "alternate/shaping": {"policy": {"mode": "alternate"}, "env": {"node_shaping": 0.5}},
    "joint/strict": {"policy": {"mode": "joint"}, "env": {}},
    "two agents/strict": {"agents": True, "env": {"agent_reward": "difference"}},
    "two agents/ties": {"agents": True, "env": {"agent_reward": "difference", "tie_moves": 3}},
}
PARTS = {
    "bootstrap": ["alternate/strict", "alternate/ties", "alternate/shaping", "joint/strict"],
    "agents": ["alternate/ties", "joint/strict", "two agents/strict", "two agents/ties"],
}


def config_for(setup: str, seed: int, budget: int) -> dict[str, Any]:
    spec = SETUPS[setup]
    agents = bool(spec.get("agents"))
    return {
        "name": f"bench-programs-{setup.replace('/', '-').replace(' ', '-')}",
        "seed": seed,
        "env_id": "selfimprove_rl/ProgramAgents-v0" if agents else "selfimprove_rl/ProgramEnv-v0",
        "data": {"kind": "pipeline", "path": "support_pipeline"},
        "target": {"model": "sim-large"},
        "policy": {
            "name": "agent_team" if agents else "program_coach",
            "kwargs": {**NODE_POLICY, **spec.get("policy", {})},
        },
        "env": {
            "minibatch_size": 32,
            "max_steps": 40,
            "target_score": None,
            "observe_on_no_op": True,
            "max_calls": budget,
            **spec["env"],
        },
        "gate": {"mode": "full_split", "min_improvement": 0.01, "max_eval_regression": 0.05},
        "stopping": {"max_total_steps": 1000, "stagnation_steps": None, "test_threshold": None},
    }


def run(setup: str, seed: int, budget: int, out: Path, thresholds: list[float]) -> dict[str, Any]:
    run_dir = out / setup.replace("/", "-").replace(" ", "-") / f"seed-{seed}"
    started = time.perf_counter()
    result = run_experiment(
        parse_config(config_for(setup, seed, budget)), out=run_dir, progress=False
    )
    summary = result.summary
    reached = {}
    for threshold in thresholds:
        record = summarise_run(setup, seed, run_dir, summary, threshold)
        reached[str(threshold)] = record.calls_to_threshold
    router = _router_accuracy(result)
    return {
        "setup": setup,
        "seed": seed,
        "test": summary["test"],
        "holdout": summary["holdout"],
        "router_test": router,
        "calls": summary["calls"],
        "steps": summary["steps"],
        "calls_to": reached,
        "seconds": round(time.perf_counter() - started, 1),
        "run_dir": str(run_dir),
    }


def _router_accuracy(result: Any) -> float | None:
    """The live build's router label accuracy on test, replayed from the run's checkpoint."""
    from envs.program_factory import make_program_env
    from selfimprove_rl.registry import Registry

    registry = Registry(Path(result.run_dir) / "versions.jsonl")
    env = make_program_env(
        data=str(Path(result.run_dir) / "checkpoint.json"), model="sim-large", registry=registry
    )
    try:
        report, _ = env.evaluate_version(registry.live_id, "test")
        samples = env.splits.test
        right = [
            outcome.text.strip().lower() == (sample.node_references.get("router") or "").lower()
            for sample, outcome in zip(samples, report.nodes["router"].outcomes, strict=True)
        ]
        return sum(right) / len(right) if right else None
    finally:
        env.close()


def fmt(values: list[float], digits: int = 3) -> str:
    interval = t_interval(values, bounds=(-math.inf, math.inf))
    mean, half = interval.mean, (interval.high - interval.low) / 2
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def table(rows: list[dict[str, Any]], setups: list[str], thresholds: list[float]) -> str:
    head = "| setup | runs | test | holdout | router labels (test) | calls |"
    head += "".join(f" calls to test ≥ {t:g} (reached) |" for t in thresholds)
    lines = [head, "|" + "---|" * (6 + len(thresholds))]
    for setup in setups:
        runs = [r for r in rows if r["setup"] == setup]
        if not runs:
            continue
        cells = [
            setup,
            str(len(runs)),
            fmt([r["test"] for r in runs]),
            fmt([r["holdout"] for r in runs]),
            fmt([r["router_test"] for r in runs if r["router_test"] is not None]),
            fmt([float(r["calls"]) for r in runs], 0),
        ]
        for threshold in thresholds:
            hits = [r["calls_to"][str(threshold)] for r in runs]
            done = [float(h) for h in hits if h is not None]
            cells.append(f"{fmt(done, 0)} ({len(done)}/{len(runs)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def router_ceiling(seeds: int, demos_per_label: tuple[int, ...] = (3, 6, 12, 24)) -> str:
    """A markdown table: holdout label accuracy of fixed router prompts, per reading and split."""
    checkpoint = load_program_source("support_pipeline", model="sim-large")
    model = SimulatedChatModel()
    instruction = "Reply with the label of the message's topic."
    lines = [
        "| reading | prompt | " + " | ".join(f"split {s}" for s in range(seeds)) + " |",
        "|---|---|" + "---|" * seeds,
    ]
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for split_seed in range(seeds):
        splits = checkpoint.split(seed=split_seed)
        by_label: dict[str, list[str]] = defaultdict(list)
        for sample in splits.train:
            by_label[sample.node_references["router"]].append(sample.input_text)
        labels = sorted(by_label)
        rules = "\n".join(
            [
                instruction,
                *(f"If the message is about {x}, reply with exactly: {x}" for x in labels),
            ]
        )
        prompts: dict[str, tuple[str, list[tuple[str, str]]]] = {"a rule per label": (rules, [])}
        for k in demos_per_label:
            rng = random.Random(split_seed)
            demos = [
                (text, label)
                for label in labels
                for text in rng.sample(by_label[label], min(k, len(by_label[label])))
            ]
            prompts[f"{k} demos per label"] = (instruction, demos)
            prompts[f"rules + {k} demos per label"] = (rules, demos)
        every = [(text, label) for label in labels for text in by_label[label]]
        prompts["every train message as a demo"] = (instruction, every)
        for reading in ("sim-large", "sim-max-cue"):
            tier = SIMULATED_MODELS[reading]
            for name, (sop, demos) in prompts.items():
                right = sum(
                    model.decide(tier, sop, s.input_text, demos=demos).reply
                    == s.node_references["router"]
                    for s in splits.holdout
                )
                scores[(reading, name)].append(right / len(splits.holdout))
    for (reading, name), values in scores.items():
        lines.append(f"| {reading} | {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["bootstrap", "agents", "ceiling", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=3000, help="Model calls per run.")
    parser.add_argument("--thresholds", default="0.75,0.9", help="Test scores to time.")
    parser.add_argument("--out", default="runs/bench_programs")
    args = parser.parse_args()
    if args.part == "ceiling":
        print(router_ceiling(args.seeds))
        return
    thresholds = [float(t) for t in args.thresholds.split(",")]
    setups = list(dict.fromkeys(PARTS["bootstrap"] + PARTS["agents"]))
    if args.part != "all":
        setups = PARTS[args.part]
    out = Path(args.out)
    results_path = out / "results.jsonl"
    done = []
    if results_path.exists():
        done = [json.loads(line) for line in results_path.open() if line.strip()]
    for setup in setups:
        for seed in range(args.seeds):
            if any(r["setup"] == setup and r["seed"] == seed for r in done):
                continue
            row = run(setup, seed, args.budget, out, thresholds)
            done.append(row)
            with results_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("setup", "seed", "test", "holdout", "calls")}))
    report = f"support_pipeline on sim-large, {args.budget} calls per run\n\n"
    for part, names in PARTS.items():
        if args.part in (part, "all"):
            report += f"## {part}\n\n{table(done, names, thresholds)}\n\n"
    atomic_write_text(out / "report.md", report)
    print(report)


if __name__ == "__main__":
    main()
