"""What does ``make demo`` show? The whole loop, from production traffic to a new live prompt.

With a Phoenix server available (``.venv-phoenix/bin/phoenix``, found by
:func:`~selfimprove_rl.telemetry.find_phoenix_executable`), :func:`run_demo`:

1. starts ``phoenix serve`` as a process (its own working directory ``<out>/phoenix``, free
   ports; stopped at the end, also on error, Ctrl-C or SIGTERM);
2. deploys the placeholder SOP prompt as a Phoenix prompt version tagged ``production``;
3. sends "production traffic": the coffee/sports inputs through the simulated model with the
   ``openai`` SDK, traced by OpenInference into the project ``coffee-sports-bot``, with the
   prompt loaded by its ``production`` tag (so every span names the prompt version);
4. scores the traffic with a Phoenix-evals classifier ("is the response the same as the
   reference reply?", rails match / mismatch, the data set's output as the reference
   variable) under the eval instrumentor, which records verdicts and eval constants;
5. runs the experiment on that telemetry: since = the start of the traffic → fetch →
   checkpoint → rule-induction coach → gate → report, then publishes the promoted build as a
   new version of the prompt, logs baseline and build per sample as Phoenix experiments,
   traces the optimizer into its own project, and moves ``production`` to the build;
6. plays the application again: loads the prompt by its ``production`` tag and calls the
   simulated model with it on new inputs, printing the replies.

Without a Phoenix server (no executable, or it does not start) it says so and runs the
offline path: the same coach on the coffee/sports data set, scored by embedding similarity.
Everything lands under ``<out>``: ``run/`` (the run directory), ``phoenix/`` (the server's
database and log, reopen it with ``PHOENIX_WORKING_DIR=<out>/phoenix phoenix serve``) and
``demo.json`` (what the demo did).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from selfimprove_rl.config import ExperimentConfig, load_config
from selfimprove_rl.errors import TelemetryError
from selfimprove_rl.fileio import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd
    from opentelemetry.sdk.trace import TracerProvider

    from selfimprove_rl.checkpoint import Sample
    from selfimprove_rl.telemetry import PublishedPrompt, RecorderStats
    from selfimprove_rl.telemetry.callbacks import PhoenixRunRecord

Echo = Callable[[str], None]

DEMO_PROJECT = "coffee-sports-bot"
DEMO_PROMPT = "coffee-sports-bot"
TARGET_MODEL = "sim-large"
JUDGE_MODEL = "sim-small"
MATCH_EVAL = "matches_reference"
MATCH_TEMPLATE = (
    "You check a support bot's reply against the reply the team wrote for the same message.\n"
    "\n"
    "[BEGIN DATA]\n"
    "Input: {input}\n"
    "Response: {output}\n"
    "Reference: {reference}\n"
    "[END DATA]\n"
    "\n"
    "Is the response the same as the reference reply? Answer match or mismatch."
)
MATCH_CHOICES = {"match": 1.0, "mismatch": 0.0}
NEW_INPUTS = (
    "Nothing beats a flat white on a rainy morning.",
    "We finally won the regional volleyball final last night!",
    "My grinder broke, so today it's instant, sadly.",
)

# The offline demo is the shipped seed experiment, renamed; the Phoenix demo runs it on the
# demo project's telemetry. (Configs move into the package as data with issue 14's other half;
# then only this path changes.)
SHIPPED_CONFIG = "coffee_sports"  # a shipped config (package data), by name


def demo_config() -> ExperimentConfig:
    """Return the offline demo's config: ``experiments/configs/coffee_sports.toml``, renamed.

    Raises:
        ConfigError: the shipped config is missing or invalid.
    """
    return load_config(SHIPPED_CONFIG).with_overrides(
        name="demo-coffee_sports", **{"target.model": TARGET_MODEL}
    )


def phoenix_demo_config(
    endpoint: str, project: str, since: datetime, prompt_name: str
) -> ExperimentConfig:
    """Return the Phoenix demo's config: the same run on the project's telemetry since ``since``.

    It publishes the promoted build, logs results back, traces the optimizer into
    ``<project>-optimizer`` and moves ``production`` to the build.
    """
    return demo_config().with_overrides(
        name="demo-phoenix",
        data={
            "kind": "phoenix",
            "endpoint": endpoint,
            "project": project,
            "since": since.isoformat(),
        },
        phoenix={
            "publish_prompt": True,
            "prompt_name": prompt_name,
            "promote_production": True,
            "log_results": True,
            "trace_optimizer": True,
            "optimizer_project": f"{project}-optimizer",
        },
    )


class DemoResult(BaseModel):
    """What the demo did (also written to ``<out>/demo.json``)."""

    mode: Literal["phoenix", "offline"]
    out: Path
    run_dir: Path
    summary: dict[str, Any]
    fallback_reason: str | None = None
    phoenix_url: str | None = None
    phoenix_dir: Path | None = None
    project: str | None = None
    optimizer_project: str | None = None
    prompt_name: str | None = None
    traffic_calls: int = 0
    eval_stats: dict[str, int] = Field(default_factory=dict)
    deployed_version: str | None = None
    production_version: str | None = None
    replies: list[tuple[str, str]] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)


# ---------------------------------------------------------------------- production side
def deploy_prompt(
    endpoint: str, prompt_name: str, system_prompt: str, model: str = TARGET_MODEL
) -> PublishedPrompt:
    """Publish a system prompt as a version of ``prompt_name`` and tag it ``production``.

    Returns:
        The version as an application loads it, by its ``production`` tag.
    """
    from selfimprove_rl.checkpoint import Action
    from selfimprove_rl.telemetry import (
        PRODUCTION_TAG,
        PhoenixPrompts,
        load_version,
        promote_version,
        publish_version,
    )

    with PhoenixPrompts(endpoint) as px:
        action = Action(system_prompt=system_prompt, model=model, temperature=0.0)
        version = publish_version(
            px, prompt_name, action, tags=(), description="The prompt the bot shipped with."
        )
        promote_version(px, version.version_id, description="initial deploy")
        return load_version(px, prompt_name, tag=PRODUCTION_TAG)


def call_with_prompt(prompt: PublishedPrompt, inputs: Sequence[str]) -> list[str]:
    """The application: answer each input with the simulated model under ``prompt``.

    The calls go through the ``openai`` SDK (traced when it is instrumented) and carry the
    prompt version (:func:`~selfimprove_rl.telemetry.using_prompt_version`).
    """
    from selfimprove_rl.backend import Backend
    from selfimprove_rl.telemetry import using_prompt_version

    client = Backend().sync_client()
    replies = []
    with using_prompt_version(prompt):
        for text in inputs:
            response = client.chat.completions.create(
                **prompt.request([{"role": "user", "content": text}])
            )
            replies.append(response.choices[0].message.content or "")
    return replies


def wait_for_spans(
    endpoint: str, project: str, since: datetime, expected: int, timeout: float = 60.0
) -> pd.DataFrame:
    """The project's LLM spans since ``since``, once Phoenix returns ``expected`` of them.

    Raises:
        TelemetryError: fewer arrived within ``timeout`` seconds.
    """
    from phoenix.client import Client
    from phoenix.client.types.spans import SpanQuery

    client = Client(base_url=endpoint)
    query = SpanQuery().where("span_kind == 'LLM'")
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        frame = client.spans.get_spans_dataframe(
            query=query, project_identifier=project, start_time=since, limit=expected + 1000
        )
        count = len(frame)
        if count >= expected:
            return frame.reset_index(drop=True)
        time.sleep(0.25)
    raise TelemetryError(
        f"Expected {expected} traced calls in Phoenix project {project!r}, found {count} after "
        f"{timeout:.0f} s; is the tracer provider exporting to {endpoint}?"
    )


def match_classifier(judge_model: str = JUDGE_MODEL) -> Any:
    """The team's eval: a Phoenix-evals classifier of reply against reference (match/mismatch)."""
    from phoenix.evals import LLM, create_classifier

    from selfimprove_rl.backend import Backend

    llm = LLM(provider="openai", model=judge_model, **Backend().phoenix_llm_kwargs())
    return create_classifier(
        name=MATCH_EVAL, prompt_template=MATCH_TEMPLATE, llm=llm, choices=MATCH_CHOICES
    )


def score_traffic(
    spans: pd.DataFrame,
    references: Mapping[str, str],
    provider: TracerProvider,
    *,
    judge_model: str = JUDGE_MODEL,
) -> RecorderStats:
    """Score traced calls with the match classifier under the eval instrumentor.

    Args:
        spans: the LLM spans (``get_spans_dataframe`` with the index reset).
        references: input text -> the reference reply (the data set's output).
        provider: the tracer provider of the traced project (evaluator spans go there).
        judge_model: the judge (a model other than the one being optimized).

    Returns:
        The recorder's counters (classifications, annotations written...).
    """
    import pandas as pd
    from phoenix.evals import evaluate_dataframe

    from selfimprove_rl.telemetry import instrument_evals, uninstrument_evals

    inputs = [
        messages[-1]["message.content"] for messages in spans["attributes.llm.input_messages"]
    ]
    outputs = [
        messages[0]["message.content"] for messages in spans["attributes.llm.output_messages"]
    ]
    rows = pd.DataFrame(
        {
            "context.span_id": spans["context.span_id"],
            "context.trace_id": spans["context.trace_id"],
            "input": inputs,
            "output": outputs,
            "reference": [references[text] for text in inputs],
        }
    )
    recorder = instrument_evals(provider)
    try:
        evaluate_dataframe(
            dataframe=rows, evaluators=[match_classifier(judge_model)], hide_tqdm_bar=True
        )
        if not recorder.flush():
            raise TelemetryError("The eval verdicts did not reach Phoenix within 30 s.")
    finally:
        stats = uninstrument_evals()
    return stats or recorder.stats


class Traffic(BaseModel):
    """The production traffic the demo sent and scored."""

    since: datetime
    calls: int
    eval_stats: dict[str, int]


def production_traffic(
    endpoint: str,
    project: str,
    prompt: PublishedPrompt,
    samples: Sequence[Sample],
    *,
    judge_model: str = JUDGE_MODEL,
) -> Traffic:
    """Send each sample's input through the traced application, then score the calls.

    Returns:
        When the traffic started (the run's ``since``), how many calls, the eval counters.
    """
    from selfimprove_rl.telemetry import setup_tracing, teardown_tracing

    references = {s.input_text: s.reference or s.output_text for s in samples}
    since = datetime.now(UTC) - timedelta(milliseconds=5)
    provider = setup_tracing(endpoint, project)
    try:
        call_with_prompt(prompt, list(references))
        provider.force_flush()
        spans = wait_for_spans(endpoint, project, since, len(references))
        stats = score_traffic(spans, references, provider, judge_model=judge_model)
    finally:
        teardown_tracing(provider)
    return Traffic(since=since, calls=len(references), eval_stats=stats.model_dump())


# ---------------------------------------------------------------------- the demo
def run_demo(
    *,
    out: str | Path | None = None,
    progress: bool = True,
    traffic: int | None = None,
    max_steps: int | None = None,
    offline: bool = False,
    endpoint: str | None = None,
    project: str = DEMO_PROJECT,
    prompt_name: str = DEMO_PROMPT,
    serve: bool = False,
    echo: Echo = print,
) -> DemoResult:
    """Run the demo: the Phoenix workflow, or the offline run when Phoenix is unavailable.

    Args:
        out: the demo folder (default ``runs/demo-<UTC time>``).
        progress: show progress bars.
        traffic: send only the first ``traffic`` inputs (default: all 200).
        max_steps: env steps of the run (default 20).
        offline: skip Phoenix.
        endpoint: use this running Phoenix instead of starting one.
        project: the traced project.
        prompt_name: the Phoenix prompt of the bot.
        serve: keep the started Phoenix server up at the end until Ctrl-C.
        echo: where progress lines go.

    Returns:
        What the demo did (also in ``<out>/demo.json``).
    """
    started = time.perf_counter()
    folder = (
        Path(out) if out is not None else Path("runs") / f"demo-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    with _exit_on_sigterm():
        if offline:
            result = _offline(folder, progress, max_steps, "offline mode was asked for", echo)
        elif endpoint is not None:
            result = _phoenix(
                folder, endpoint, None, progress, traffic, max_steps, project, prompt_name, echo
            )
        else:
            result = _with_local_phoenix(
                folder, progress, traffic, max_steps, project, prompt_name, serve, echo
            )
    result.seconds["total"] = round(time.perf_counter() - started, 1)
    atomic_write_text(folder / "demo.json", result.model_dump_json(indent=2) + "\n")
    echo(f"demo finished in {result.seconds['total']:.0f} s; details in {folder / 'demo.json'}")
    return result


def _with_local_phoenix(
    folder: Path,
    progress: bool,
    traffic: int | None,
    max_steps: int | None,
    project: str,
    prompt_name: str,
    serve: bool,
    echo: Echo,
) -> DemoResult:
    from selfimprove_rl.telemetry import PhoenixServer

    phoenix_dir = folder / "phoenix"
    server = PhoenixServer(phoenix_dir)
    begin = time.perf_counter()
    echo(f"starting a local Phoenix server (working directory {phoenix_dir}) ...")
    try:
        server.start()
    except TelemetryError as exc:
        reason = f"no Phoenix server available: {exc}"
        echo(f"{reason}\nRunning the offline demo instead (no Phoenix, same coach).")
        return _offline(folder, progress, max_steps, reason, echo)
    try:
        start_seconds = round(time.perf_counter() - begin, 1)
        echo(f"Phoenix is up at {server.url} ({start_seconds:.0f} s)")
        result = _phoenix(
            folder,
            server.url,
            phoenix_dir,
            progress,
            traffic,
            max_steps,
            project,
            prompt_name,
            echo,
        )
        result.seconds["phoenix_start"] = start_seconds
        if serve:
            echo(f"Phoenix stays up at {server.url}; press Ctrl-C to stop it.")
            _wait_for_interrupt()
        return result
    finally:
        server.stop()
        echo("Phoenix server stopped.")


def _phoenix(
    folder: Path,
    endpoint: str,
    phoenix_dir: Path | None,
    progress: bool,
    traffic: int | None,
    max_steps: int | None,
    project: str,
    prompt_name: str,
    echo: Echo,
) -> DemoResult:
    from selfimprove_rl.mimic import PLACEHOLDER_SOP_PROMPT, load_dataset
    from selfimprove_rl.runner import run_experiment
    from selfimprove_rl.telemetry import (
        PRODUCTION_TAG,
        PhoenixPrompts,
        load_version,
        phoenix_integrations,
        setup_tracing,
        teardown_tracing,
    )
    from selfimprove_rl.telemetry.callbacks import PhoenixRunRecord

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 1)
        clock = now

    samples = load_dataset("coffee_sports", model=TARGET_MODEL, limit=traffic).samples
    deployed = deploy_prompt(endpoint, prompt_name, PLACEHOLDER_SOP_PROMPT)
    echo(
        f"deployed the placeholder SOP prompt as {prompt_name!r} version {deployed.version_id} "
        "(tag production)"
    )
    sent = production_traffic(endpoint, project, deployed, samples)
    lap("traffic_and_evals")
    echo(
        f"production traffic: {sent.calls} calls traced into project {project!r} since "
        f"{sent.since.isoformat()}, scored by {MATCH_EVAL!r} (match/mismatch; "
        f"{sent.eval_stats.get('annotations_written', 0)} verdicts written)"
    )
    config = phoenix_demo_config(endpoint, project, sent.since, prompt_name)
    if max_steps is not None:
        config = config.with_overrides(**{"stopping.max_total_steps": max_steps})
    echo("optimizing: fetch -> checkpoint -> rule_induction -> gate -> report -> publish ...")
    run = run_experiment(
        config, out=folder / "run", progress=progress, integrations=phoenix_integrations()
    )
    lap("optimize")
    summary = run.summary
    record = PhoenixRunRecord.load(run.run_dir)
    _echo_record(record, echo)
    with PhoenixPrompts(endpoint) as px:
        live = load_version(px, prompt_name, tag=PRODUCTION_TAG)
    echo(f"the application, with the prompt loaded by its {PRODUCTION_TAG!r} tag:")
    provider = setup_tracing(endpoint, project)
    try:
        replies = call_with_prompt(live, NEW_INPUTS)
    finally:
        teardown_tracing(provider)
    for text, reply in zip(NEW_INPUTS, replies, strict=True):
        echo(f"  user: {text}\n  bot:  {reply}")
    lap("application")
    optimizer_project = config.phoenix.optimizer_project
    echo(
        f"Phoenix: {endpoint} - traces and evals in project {project!r}, the optimizer's "
        f"trace in {optimizer_project!r}, prompt versions under Prompts > {prompt_name!r}"
    )
    return DemoResult(
        mode="phoenix",
        out=folder,
        run_dir=run.run_dir,
        summary=summary,
        phoenix_url=endpoint,
        phoenix_dir=phoenix_dir,
        project=project,
        optimizer_project=optimizer_project,
        prompt_name=prompt_name,
        traffic_calls=sent.calls,
        eval_stats=sent.eval_stats,
        deployed_version=deployed.version_id,
        production_version=live.version_id,
        replies=list(zip(NEW_INPUTS, replies, strict=True)),
        seconds=seconds,
    )


def _echo_record(record: PhoenixRunRecord, echo: Echo) -> None:
    """Say what the run wrote to Phoenix."""
    for entry in record.published:
        scores = ", ".join(f"{split} {value:.3f}" for split, value in entry.scores.items())
        echo(
            f"published build {entry.registry_version} as {entry.prompt_name!r} version "
            f"{entry.phoenix_version_id} ({scores})"
        )
    for note in record.notes:
        echo(note)
    move = record.production
    if move is not None:
        echo(
            f"moved 'production': {move.previous_version_id} -> {move.phoenix_version_id} "
            f"(build {move.registry_version})"
        )
    for logged in record.experiments:
        echo(
            f"experiment {logged.role} {logged.registry_version} on {logged.split}: "
            f"{logged.aggregate:.3f}  {logged.url or ''}"
        )


def _offline(
    folder: Path, progress: bool, max_steps: int | None, reason: str, echo: Echo
) -> DemoResult:
    from selfimprove_rl.runner import run_experiment

    config = demo_config()
    if max_steps is not None:
        config = config.with_overrides(**{"stopping.max_total_steps": max_steps})
    begin = time.perf_counter()
    run = run_experiment(config, out=folder / "run", progress=progress)
    return DemoResult(
        mode="offline",
        out=folder,
        run_dir=run.run_dir,
        summary=run.summary,
        fallback_reason=reason,
        seconds={"optimize": round(time.perf_counter() - begin, 1)},
    )


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for the block, so the Phoenix server is stopped too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        return
