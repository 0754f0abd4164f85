"""What was logged? Phoenix tracing, the eval instrumentor, sources, checkpoints, publishing.

Everything that talks to Phoenix lives here and returns this package's own records. Phoenix,
OpenTelemetry and OpenInference are imported inside the functions that use them, so importing
this package stays cheap.

The workflow, end to end::

    provider = setup_tracing(url, "support-bot")          # optional: your own OTel set-up works
    recorder = instrument_evals(provider)                 # record every Phoenix-evals verdict
    ...                                                   # production calls, then evals
    source = PhoenixSource(url, "support-bot")
    frames = source.fetch(since=start)                    # progress bar; source.summary
    checkpoint = build_checkpoint(frames)                 # or source.checkpoint()
    # multi-call programs: PhoenixSource(url, project, roots=True), then
    # build_program_checkpoint(frames): one sample per trace, one node per call
    ...                                                   # optimize
    version = publish_version(url, "support-bot", new_action, scores=...)
    promote_version(url, version.version_id)              # only when asked

A run does the last part itself when its config asks and the caller wires Phoenix in
(``run_experiment(config, integrations=phoenix_integrations())``; ``[phoenix]`` section:
:class:`PhoenixReporter` publishes builds and logs results, :class:`OptimizerTracer` traces
the optimizer into its own project); ``selfimprove-rl promote RUN_DIR`` (:func:`promote_run`)
moves ``production`` afterwards.
"""

from selfimprove_rl.telemetry.builder import build_checkpoint
from selfimprove_rl.telemetry.callbacks import (
    PhoenixReporter,
    PhoenixRunRecord,
    PromotionResult,
    build_callbacks,
    promote_run,
)
from selfimprove_rl.telemetry.frames import FetchInfo, FetchSummary, TelemetryFrames
from selfimprove_rl.telemetry.instrument import (
    EvalRecorder,
    RecorderStats,
    evaluating,
    flush_evals,
    instrument_evals,
    is_instrumented,
    uninstrument_evals,
)
from selfimprove_rl.telemetry.optimizer_tracing import OptimizerTracer
from selfimprove_rl.telemetry.program_builder import build_program_checkpoint
from selfimprove_rl.telemetry.publish import (
    CANDIDATE_TAG,
    PRODUCTION_TAG,
    LoggedExperiment,
    PhoenixPrompts,
    PublishedPrompt,
    load_version,
    log_experiment,
    promote_version,
    publish_version,
    using_prompt_version,
)
from selfimprove_rl.telemetry.server import PhoenixServer, find_phoenix_executable
from selfimprove_rl.telemetry.source import (
    FileSource,
    PhoenixSource,
    TelemetrySource,
    require_aware,
)
from selfimprove_rl.telemetry.tracing import setup_tracing, teardown_tracing
from selfimprove_rl.telemetry.wiring import fetch_phoenix_checkpoint, phoenix_integrations

__all__ = [
    "CANDIDATE_TAG",
    "PRODUCTION_TAG",
    "EvalRecorder",
    "FetchInfo",
    "FetchSummary",
    "FileSource",
    "LoggedExperiment",
    "OptimizerTracer",
    "PhoenixPrompts",
    "PhoenixReporter",
    "PhoenixRunRecord",
    "PhoenixServer",
    "PhoenixSource",
    "PromotionResult",
    "PublishedPrompt",
    "RecorderStats",
    "TelemetryFrames",
    "TelemetrySource",
    "build_callbacks",
    "build_checkpoint",
    "build_program_checkpoint",
    "evaluating",
    "fetch_phoenix_checkpoint",
    "find_phoenix_executable",
    "flush_evals",
    "instrument_evals",
    "is_instrumented",
    "load_version",
    "log_experiment",
    "phoenix_integrations",
    "promote_run",
    "promote_version",
    "publish_version",
    "require_aware",
    "setup_tracing",
    "teardown_tracing",
    "uninstrument_evals",
    "using_prompt_version",
]
