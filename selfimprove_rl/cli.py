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


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
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
    args = build_parser().parse_args(argv)
    runner: Runner = args.run
    return runner(args)


if __name__ == "__main__":
    sys.exit(main())
