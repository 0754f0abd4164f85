"""How often does the local 0.5B model give the LLM coach a usable reply, in which mode, how fast?

Needs the local model (``make llm``). Two parts, both on ``support_intents`` with the local
model (Qwen2.5-Coder-0.5B-Instruct Q4, llama.cpp) as the target *and* as the coach:

1. ``--asks N``: resets the env once (minibatch ``--minibatch``), then asks the coach N times
   about that one observation (seeds 0..N-1, each ask with its retries) for each
   ``--formats`` setting (``auto`` negotiates json_schema -> json_object -> text; ``text``
   pins plain text), and prints per setting: the negotiated mode and refusals, replies, the
   share of replies that validated, the verdicts, and seconds per decision.
2. ``--run-steps K``: a short ``selfimprove-rl run`` of the ``llm_coach`` policy (on the
   first ``--run-rows`` lines, or all), printing the summary, the coach's report (modes,
   valid share, verdicts) and the wall time.

    .venv/bin/python benchmarks/bench_llm_coach.py --asks 4 --run-steps 4 --run-rows 48

The figures come from a 0.5B model on whatever CPU runs this; they say how a small real coach
behaves, not how a production model would.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from selfimprove_rl.backend import Backend
from selfimprove_rl.local_llm import DEFAULT_ALIAS


def ask_many(
    live: Backend, asks: int, formats: list[str], minibatch: int, temperature: float
) -> list[dict[str, Any]]:
    """Reset the env once, then ask the coach ``asks`` times per response-format setting."""
    import gymnasium

    import envs
    from policies.llm_coach import LLMCoachProposer, _json_view

    env = gymnasium.make(
        envs.LLM_ENV_ID, data="support_intents", backend=live, minibatch_size=minibatch
    )
    started = time.perf_counter()
    observation, info = env.reset(seed=0)
    reset_s = time.perf_counter() - started
    env.close()
    view = _json_view(observation, info)
    print(f"env reset on the local model: {reset_s:.0f} s, scores {info['scores']}")
    rows = []
    for mode in formats:
        coach = LLMCoachProposer(
            {"model": DEFAULT_ALIAS, "temperature": temperature, "response_format": mode},
            backend={"kind": "local_llm"},
        )
        seconds = []
        outcomes = []
        for seed in range(asks):
            coach.chat.seed = seed
            started = time.perf_counter()
            candidates = coach.propose(view["observation"], view["info"], k=1)
            seconds.append(time.perf_counter() - started)
            outcomes.append(candidates[0].directive_text() if candidates else "(no usable reply)")
        report = coach.report()
        row = {
            "setting": mode,
            **report,
            "decisions": asks,
            "usable_decisions": sum(o != "(no usable reply)" for o in outcomes),
            "seconds_per_decision": round(sum(seconds) / len(seconds), 1),
            "outcomes": outcomes,
        }
        rows.append(row)
        print(json.dumps(row, indent=2))
    return rows


def short_run(steps: int, minibatch: int, rows: int, out: Path) -> dict[str, Any]:
    """Run the llm_coach policy for ``steps`` steps with the local model as coach and target.

    ``rows`` > 0 keeps the first ``rows`` lines of support_intents (its splits and the final
    report then cost fewer calls: each takes seconds on a busy 2-core machine).
    """
    from selfimprove_rl.config import parse_config
    from selfimprove_rl.mimic import dataset_path
    from selfimprove_rl.runner import run_experiment

    data: dict[str, str] = {"kind": "dataset", "path": "support_intents"}
    if rows:
        lines = dataset_path("support_intents").read_text(encoding="utf-8").splitlines()
        subset = out.parent / "support_intents_subset.jsonl"
        subset.write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
        data = {"kind": "mimic", "path": str(subset)}
    config = parse_config(
        {
            "name": "llm_coach_local",
            "backend": {"kind": "local_llm"},
            "data": data,
            "env": {"minibatch_size": minibatch, "observe_on_no_op": True},
            "policy": {
                "name": "llm_coach",
                "kwargs": {"model": DEFAULT_ALIAS, "backend": {"kind": "local_llm"}},
            },
            "stopping": {"max_total_steps": steps, "stagnation_steps": None},
        }
    )
    started = time.perf_counter()
    summary = run_experiment(config, out=out, progress=True).summary
    wall = time.perf_counter() - started
    keys = ("train", "test", "holdout", "baseline", "calls", "steps", "promotions")
    figures = {k: summary[k] for k in keys} | {"wall_s": round(wall), "run_dir": str(out)}
    figures["coach"] = summary.get("policy_report")
    figures["rows"] = rows or "all"
    print(json.dumps(figures, indent=2))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asks", type=int, default=4, help="Coach decisions per setting.")
    parser.add_argument("--formats", default="auto,text", help="Comma-separated settings.")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--run-steps", type=int, default=0, help="Steps of the short run.")
    parser.add_argument("--run-rows", type=int, default=0, help="Data lines of the run (0: all).")
    parser.add_argument("--out", default=None, help="Folder for results (default: temporary).")
    args = parser.parse_args()
    # `kill <pid>` must still stop the model server this script starts.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-llm-coach-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with Backend(kind="local_llm").serving() as live:
        if args.asks:
            formats = [f.strip() for f in args.formats.split(",") if f.strip()]
            results["asks"] = ask_many(live, args.asks, formats, args.minibatch, args.temperature)
        if args.run_steps:
            results["run"] = short_run(args.run_steps, args.minibatch, args.run_rows, out / "run")
    (out / "bench_llm_coach.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"results: {out / 'bench_llm_coach.json'}")


if __name__ == "__main__":
    main()
