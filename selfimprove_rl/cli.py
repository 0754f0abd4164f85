"""The ``selfimprove-rl`` command line: one subcommand per workflow step.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args)`` runs it, importing what it needs on demand so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]


def _add_serve_sim(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve-sim",
        help="Serve the simulated chat model as a local OpenAI-compatible HTTP server.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind.")
    parser.add_argument("--port", type=int, default=8765, help="Port to bind (0: any free port).")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="Added latency per request.")
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="Share of requests answered with a fault."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the fault injection.")
    parser.set_defaults(run=_run_serve_sim)


def _run_serve_sim(args: argparse.Namespace) -> int:
    from selfimprove_rl.simulated.server import serve

    serve(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        seed=args.seed,
    )
    return 0


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="Run an experiment from a TOML config, or from flags alone.",
        description="Run an experiment. Flags override the config's fields; without a config "
        "they describe the whole job (e.g. --data my.jsonl --policy rule_induction).",
    )
    parser.add_argument("config", nargs="?", help="Experiment config (TOML).")
    parser.add_argument("--out", help="Run directory (default: a new folder under out_dir).")
    parser.add_argument("--resume", action="store_true", help="Continue the run in --out.")
    parser.add_argument(
        "--data", help="Mimic JSONL ({input, output} lines), checkpoint JSON, or data set name."
    )
    parser.add_argument("--policy", help="Policy name or 'module:Class'.")
    parser.add_argument("--model", help="Target model (e.g. sim-large).")
    parser.add_argument("--seed", type=int, help="Seed of episodes and policy.")
    parser.add_argument("--max-steps", type=int, help="Env steps across all episodes.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(run=_run_run)


def _data_overrides(data: str | None) -> dict[str, object]:
    if data is None:
        return {}
    kind = "checkpoint" if data.endswith(".json") else "mimic" if data.endswith(".jsonl") else "dataset"
    return {"data.kind": kind, "data.path": data}


def _run_run(args: argparse.Namespace) -> int:
    from selfimprove_rl.config import ExperimentConfig, load_config
    from selfimprove_rl.runner import run_experiment

    config = load_config(args.config) if args.config else ExperimentConfig()
    config = config.with_overrides(
        **_data_overrides(args.data),
        **{
            "policy.name": args.policy,
            "target.model": args.model,
            "seed": args.seed,
            "stopping.max_total_steps": args.max_steps,
        },
    )
    result = run_experiment(
        config, out=args.out, resume=args.resume, progress=not args.no_progress
    )
    _print_summary(result.summary)
    return 0


def _print_summary(summary: dict[str, object]) -> None:
    print(
        f"policy {summary['policy']} on {summary['backend']}: promoted {summary['promoted_version']} "
        f"(train {summary['train']:.3f}, test {summary['test']:.3f}, "
        f"holdout {summary['holdout']:.3f}; baseline holdout "
        f"{summary['baseline']['holdout']:.3f}) after {summary['steps']} steps, "  # type: ignore[index]
        f"{summary['calls']} model calls; stopped: {summary['stopped_because']}"
    )
    print(f"run directory: {summary['run_dir']}")


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="The coffee/sports run on the simulated model (no API key needed).",
    )
    parser.add_argument("--out", help="Run directory (default: runs/demo-<time>).")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from selfimprove_rl.demo import run_demo

    summary = run_demo(out=args.out, progress=not args.no_progress)
    _print_summary(summary)
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_run,
    _add_demo,
    _add_serve_sim,
]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="selfimprove-rl",
        description="Self-improving LLM calls: optimize a traced call's prompt over an offline replay.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    from selfimprove_rl.errors import SelfImproveError

    args = build_parser().parse_args(argv)
    runner: Runner = args.run
    try:
        return runner(args)
    except SelfImproveError as exc:
        print(f"selfimprove-rl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
