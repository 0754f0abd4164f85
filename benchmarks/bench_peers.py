"""Side by side with the peers: GEPA and DSPy against our policies, same data, model, budget.

Every row works on the same checkpoint and split (``support_intents`` / ``coffee_sports``,
exact-match eval, ``checkpoint.split(seed=0)``), the same target model and the same metric
(our ``ExactMatch``); every call to the target goes through a counting proxy, so the calls
in the table are counted, not estimated. Rows:

* ``seed``: the starting prompt, replayed on holdout;
* peers: ``gepa`` (GEPA 0.1.4, default adapter, ``max_metric_calls`` = the budget; needs a
  reflection LM), ``dspy_bootstrap`` (DSPy BootstrapFewShot; no reflection LM, so it also runs
  on the simulated model), ``dspy_mipro_light`` (DSPy MIPROv2 ``auto="light"``; needs a
  prompt model); on the local model the reflection / prompt model is the target model itself;
* ours: shipped policies through ``selfimprove_rl.runner.run_experiment`` with ``[env]
  max_calls`` = the budget.

Targets: ``sim`` (``selfimprove-rl serve-sim``, sim-large) and ``local`` (llama.cpp's server
with the 0.5B GGUF). Results go to one JSON file per (target, data set, row, seed) under
``--out``; a finished row is skipped when the benchmark runs again, and the proxy's response
cache (``--out``/cache-<target>.sqlite) makes a re-run of an interrupted row cheap. The table
(``peers_table.md`` / ``.csv``) and every scored prompt (``peers_prompts.json``) are rewritten
from all stored results at the end.

    .venv-peers/bin/python benchmarks/bench_peers.py --target sim --quick
    .venv-peers/bin/python benchmarks/bench_peers.py --target local --seeds 3
    .venv-peers/bin/python benchmarks/bench_peers.py --table-only

(``make peers`` creates ``.venv-peers``: the project plus gepa 0.1.4 and dspy 3.4.)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peers.common import ResultStore, RowResult, Scorer, Task, dumps, load_task
from peers.counting_proxy import CountingProxy
from peers.ours import OUR_ROWS, run_ours
from peers.table import aggregate, markdown, write_outputs
from peers.targets import DEFAULT_ALIAS, Target, serve_target

from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.fileio import atomic_write_text

DATASETS = ("support_intents", "coffee_sports")
PEERS = ("gepa", "dspy_bootstrap", "dspy_mipro_light")
NEEDS_HELPER = frozenset({"gepa", "dspy_mipro_light"})
DEFAULT_PEERS = {"sim": ("dspy_bootstrap",), "local": ("gepa", "dspy_bootstrap")}
DEFAULT_OURS = {
    "sim": ("rule_induction", "ucb1", "successive_halving", "population", "random"),
    "local": ("rule_induction", "ucb1", "population", "llm_coach", "ucb1_mixed"),
}


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _choose(text: str | None, default: tuple[str, ...]) -> list[str]:
    """A comma-separated choice; ``None`` gives the default, ``none`` nothing."""
    if text is None:
        return list(default)
    return [] if text.strip() == "none" else _split(text) or []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("sim", "local"), default="sim")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=3, help="Seeds 0..N-1 per row.")
    parser.add_argument(
        "--seed-list",
        default=None,
        help="Comma-separated seeds to run instead of 0..N-1 (e.g. 1,2 to add seeds to a row).",
    )
    parser.add_argument("--quick", action="store_true", help="One seed, support_intents only.")
    parser.add_argument("--budget-calls", type=int, default=1000, help="Target calls per run.")
    parser.add_argument(
        "--peers", default=None, help=f"Comma-separated from {', '.join(PEERS)} (default: "
        "dspy_bootstrap on sim; gepa, dspy_bootstrap on local; 'none' for none)."
    )  # fmt: skip
    parser.add_argument(
        "--ours", default=None, help=f"Comma-separated from {', '.join(OUR_ROWS)} (default: "
        "per target, see DEFAULT_OURS; 'none' for none)."
    )  # fmt: skip
    parser.add_argument("--no-seed-row", action="store_true", help="Skip the seed prompt row.")
    parser.add_argument("--out", default="runs/peers", help="Results folder (resumable).")
    parser.add_argument("--limit", type=int, default=None, help="First N lines of each data set.")
    parser.add_argument("--no-cache", action="store_true", help="Forward every call.")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=160,
        help="Reply cap of every target call (default 160: three times the longest reference "
        "reply, so no verdict changes; 0 sends none).",
    )
    parser.add_argument("--sim-model", default="sim-large")
    parser.add_argument("--gguf", default=None, help="GGUF model for --target local.")
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help="Local model name.")
    parser.add_argument("--llm-python", default=None, help="Python with llama-cpp-python.")
    parser.add_argument(
        "--base-url", default=None, help="A running local model server (--target local)."
    )
    parser.add_argument("--table-only", action="store_true", help="Only rewrite the table.")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 1
        args.datasets = "support_intents"
    if args.seeds < 1 or args.budget_calls < 1:
        parser.error("--seeds and --budget-calls must be positive")
    try:
        args.seed_values = (
            sorted({int(part) for part in _split(args.seed_list) or []})
            if args.seed_list
            else list(range(args.seeds))
        )
    except ValueError:
        parser.error(f"--seed-list takes comma-separated integers, got {args.seed_list!r}")
    if not args.seed_values or min(args.seed_values) < 0:
        parser.error("--seed-list needs at least one seed, none negative")
    return args


def planned_rows(args: argparse.Namespace) -> list[str]:
    """Row names in run order: seed, peers, ours (validated against the target)."""
    peers = _choose(args.peers, DEFAULT_PEERS[args.target])
    ours = _choose(args.ours, DEFAULT_OURS[args.target])
    unknown = [p for p in peers if p not in PEERS] + [o for o in ours if o not in OUR_ROWS]
    if unknown:
        raise ConfigError(
            f"Unknown rows {unknown}; peers are {', '.join(PEERS)}, ours are {', '.join(OUR_ROWS)}."
        )
    if args.target == "sim":
        needs = [p for p in peers if p in NEEDS_HELPER]
        needs += [o for o in ours if OUR_ROWS[o].needs_coach]
        if needs:
            raise ConfigError(
                f"{needs} need a model that writes prompts (a reflection, prompt or coach "
                "model); the simulated model cannot. Run them with --target local."
            )
    return ([] if args.no_seed_row else ["seed"]) + peers + ours


def _settings(args: argparse.Namespace, task: Task, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "limit": args.limit,
        "budget_calls": args.budget_calls,
        "max_tokens": task.seed_action.max_tokens,
        "samples": {k: len(v) for k, v in task.splits._asdict().items()},
    }


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Results of one folder must share data, model and budget, or the table would mix them."""
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != settings:
            raise ConfigError(
                f"{path.parent} holds results made with {stored}, not {settings}; use another "
                "--out (or the same --limit / --budget-calls / model)."
            )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(settings, indent=1))


def run_seed_row(task: Task, target: Target, scorer: Scorer, proxy: CountingProxy) -> RowResult:
    before = proxy.counts()
    scored = scorer.score("seed prompt", task.seed_action, task.splits.holdout)
    return RowResult(
        target=target.name,
        model=target.model,
        dataset=task.dataset,
        row="seed",
        kind="seed",
        seed=0,
        budget_calls=None,
        holdout=scored.score,
        holdout_source="replay",
        holdout_replay=scored.score,
        target_calls=0,
        other_calls=0,
        eval_calls=(proxy.counts() - before).calls(),
        wall_s=0.0,
        prompts=[scored],
    )


def _runner(
    row: str, task: Task, target: Target, proxy: CountingProxy, scorer: Scorer, args: Any
) -> Callable[[int, Path, Path, float | None], RowResult]:
    def run(seed: int, work: Path, checkpoint: Path, seed_holdout: float | None) -> RowResult:
        common = {"seed": seed, "budget_calls": args.budget_calls, "work_dir": work}
        if row == "gepa":
            from peers.gepa_peer import run_gepa

            return run_gepa(task, target, proxy, scorer, **common)
        if row.startswith("dspy_"):
            from peers.dspy_peer import run_dspy

            optimizer = row.removeprefix("dspy_")
            return run_dspy(optimizer, task, target, proxy, scorer, **common)  # type: ignore[arg-type]
        return run_ours(
            OUR_ROWS[row],
            task,
            target,
            proxy,
            scorer,
            checkpoint_path=checkpoint,
            seed_holdout=seed_holdout,
            **common,
        )

    return run


def run_target(args: argparse.Namespace, store: ResultStore, rows: list[str]) -> list[str]:
    """Run every missing (data set, row, seed) on one target; returns the failures."""
    datasets = _split(args.datasets) or list(DATASETS)
    seeds = args.seed_values

    def missing() -> list[tuple[str, str, int]]:
        return [
            (dataset, row, seed)
            for dataset in datasets
            for row in rows
            for seed in ([0] if row == "seed" else seeds)
            if store.load(args.target, dataset, row, seed) is None
        ]

    todo = missing()
    if not todo:
        print(f"[peers] {args.target}: every planned row is stored under {store.root}")
        return []
    print(f"[peers] {args.target}: {len(todo)} row runs to do", flush=True)
    failures: list[str] = []
    cache = None if args.no_cache else ResponseCache(store.root / f"cache-{args.target}.sqlite")
    with serve_target(
        args.target,
        sim_model=args.sim_model,
        gguf=args.gguf,
        alias=args.alias,
        llm_python=args.llm_python,
        base_url=args.base_url,
    ) as target:
        proxy = CountingProxy(target.upstream, cache=cache, timeout_s=target.timeout_s).start()
        scorer = Scorer(
            proxy.base_url("score"),
            target.backend_kind,
            concurrency=target.concurrency,
            timeout_s=target.timeout_s,
            sim_model=None if target.name == "sim" else args.sim_model,
        )
        try:
            for dataset in datasets:
                task = load_task(
                    dataset, target.model, limit=args.limit, max_tokens=args.max_tokens or None
                )
                folder = store.root / args.target / dataset
                _check_settings(folder / "settings.json", _settings(args, task, target.model))
                checkpoint = folder / "checkpoint.json"
                if not checkpoint.exists():
                    task.checkpoint.save(checkpoint)
                for _, row, seed in [t for t in todo if t[0] == dataset]:
                    failures += _run_one(args, store, task, target, proxy, scorer, row, seed)
        finally:
            scorer.close()
            proxy.stop()
            if cache is not None:
                cache.close()
    return failures


def _run_one(
    args: argparse.Namespace,
    store: ResultStore,
    task: Task,
    target: Target,
    proxy: CountingProxy,
    scorer: Scorer,
    row: str,
    seed: int,
) -> list[str]:
    label = f"{target.name}/{task.dataset}/{row}/seed{seed}"
    print(f"[peers] {label} ...", flush=True)
    started = time.perf_counter()
    try:
        if row == "seed":
            result = run_seed_row(task, target, scorer, proxy)
        else:
            stored_seed = store.load(target.name, task.dataset, "seed", 0)
            work = store.path(target.name, task.dataset, row, seed).with_suffix("")
            work.mkdir(parents=True, exist_ok=True)
            run = _runner(row, task, target, proxy, scorer, args)
            result = run(
                seed,
                work,
                store.root / target.name / task.dataset / "checkpoint.json",
                None if stored_seed is None else stored_seed.holdout,
            )
    except Exception as exc:  # one row failing must not lose the others; it is reported
        traceback.print_exc()
        return [f"{label}: {type(exc).__name__}: {exc}"]
    store.save(result)
    print(
        f"[peers] {label}: holdout {result.holdout:.3f} ({result.holdout_source}), "
        f"{result.target_calls} target + {result.other_calls} other calls "
        f"({result.cached_calls} cached), {result.wall_s:.0f} s optimizing, "
        f"{time.perf_counter() - started:.0f} s in all",
        flush=True,
    )
    return []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers this process started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import torch

    torch.set_num_threads(1)
    store = ResultStore(Path(args.out))
    failures: list[str] = []
    if not args.table_only:
        failures = run_target(args, store, planned_rows(args))
    results = store.all()
    rows = aggregate(results)
    write_outputs(rows, results, store.root)
    print(markdown(rows))
    print(dumps({"out": str(store.root), "results": len(results), "failed_rows": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
