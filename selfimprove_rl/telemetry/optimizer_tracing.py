"""What did the optimizer do, step by step? Its own trace, in its own Phoenix project.

:class:`OptimizerTracer` is a run callback (config ``phoenix.trace_optimizer``, off by
default) that records a run as one trace in a separate Phoenix project
(``phoenix.optimizer_project``), so a researcher inspects a run where they inspect
production::

    optimize <experiment>             AGENT      config, data, final scores, stop reason
    ├── episode 0                     CHAIN      start version, steps, total reward
    │   ├── replay                    CHAIN      the start version on the first minibatch
    │   ├── eval <name>               EVALUATOR  judge calls, mean score
    │   ├── step 1                    CHAIN      directive, versions, reward, scores, calls, gate
    │   │   ├── policy.act            AGENT      the coach (its LLM calls beneath, when traced)
    │   │   ├── replay, eval ...                 base and new version on the minibatch
    │   │   └── score test v0001      CHAIN      the gate's test scoring (replay, eval beneath)
    │   └── step 2 ...
    ├── episode 1 ...
    └── report                        CHAIN      the final build and baseline scored per split
        └── score holdout v0002 ...

Replays run under ``suppress_tracing()`` and the judge's calls too, so they are recorded
here as manual spans (one per replay and per evaluator call) rather than as LLM spans. The
coach's OpenAI calls are traced beneath ``policy.act`` by the OpenInference instrumentor bound
to this tracer's provider, when no other provider instruments the ``openai`` SDK in this
process.

The tracer uses its own tracer provider (never the global one) and refuses the production
project. Tracing never breaks a run: a failure to record is logged and counted.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from selfimprove_rl.errors import ConfigError
from selfimprove_rl.telemetry.run_record import OptimizerTraceRecord, PhoenixRunRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from selfimprove_rl.registry import GateDecision
    from selfimprove_rl.runner import ExperimentRunner

logger = logging.getLogger(__name__)

ATTR = "selfimprove."
KIND = "openinference.span.kind"
_MAX_TEXT = 8000


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attribute values: primitives kept, mappings as JSON, None dropped."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool | int | float):
            out[key] = value
        elif isinstance(value, str):
            out[key] = value[:_MAX_TEXT]
        elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
            out[key] = [str(v) for v in value]
        else:
            out[key] = json.dumps(value, default=str, ensure_ascii=False)[:_MAX_TEXT]
    return out


def _describe_action(action: Any) -> str:
    edits = getattr(action, "edits", action)
    if isinstance(edits, str):
        return edits
    if isinstance(edits, Sequence):
        from selfimprove_rl.prompt import to_directive

        try:
            return "\n".join(to_directive(edit) for edit in edits)
        except (TypeError, AttributeError, ValueError):
            pass
    return str(action)


class OptimizerTracer:
    """Traces a run's episodes, steps, replays, evals and coach into a Phoenix project.

    Args:
        endpoint: the Phoenix base URL.
        project: the project for the optimizer's spans.
        production_project: the project of the traced production calls, refused as ``project``.
        batch: export in a background batch (``False``: each span as it ends).
        instrument_openai: trace the coach's OpenAI calls with this provider when the SDK is
            not instrumented already.

    Attributes:
        trace_id: the run's trace id (32 hex digits) once started.
        spans: spans started so far.
        failures: tracing errors swallowed (logged).

    Raises:
        ConfigError: ``project`` is empty or the production project.
    """

    def __init__(
        self,
        endpoint: str,
        project: str,
        *,
        production_project: str | None = None,
        batch: bool = True,
        instrument_openai: bool = True,
    ) -> None:
        if not project:
            raise ConfigError("Expects a Phoenix project for the optimizer's traces, got ''.")
        if production_project is not None and project == production_project:
            raise ConfigError(
                f"phoenix.optimizer_project is {project!r}, the production project the data "
                "comes from; the optimizer's spans must not mix with production traffic. Choose "
                "another name (default 'selfimprove-rl-optimizer')."
            )
        self.endpoint = endpoint
        self.project = project
        self.batch = batch
        self.instrument_openai = instrument_openai
        self.trace_id: str | None = None
        self.spans = 0
        self.failures = 0
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        self._root: Span | None = None
        self._episode: Span | None = None
        self._episode_totals: dict[str, Any] = {}
        self._step: Span | None = None
        self._report: Span | None = None
        self._stack: list[Span] = []
        self._restore: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ spans
    def _parent(self) -> Span | None:
        if self._stack:
            return self._stack[-1]
        return self._step or self._episode or self._report or self._root

    def _begin(
        self, name: str, kind: str, attributes: Mapping[str, Any], parent: Span | None = None
    ) -> Span | None:
        """Start a span under ``parent`` (default: the innermost open one); None on failure."""
        if self._tracer is None:
            return None
        try:
            from opentelemetry import trace
            from opentelemetry.context import Context

            holder = parent or self._parent()
            context = trace.set_span_in_context(holder) if holder is not None else Context()
            span = self._tracer.start_span(
                name, context=context, attributes={KIND: kind, **_attributes(attributes)}
            )
        except Exception as exc:
            self._failed("start a span", exc)
            return None
        self.spans += 1
        return span

    def _end(
        self,
        span: Span | None,
        attributes: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        if span is None:
            return
        try:
            from opentelemetry.trace import Status, StatusCode

            if attributes:
                span.set_attributes(_attributes(attributes))
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            else:
                span.set_status(Status(StatusCode.OK))
            span.end()
        except Exception as exc:
            self._failed("end a span", exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            logger.warning("The optimizer tracer could not %s (tracing continues): %s", what, exc)

    @contextmanager
    def _pushed(self, span: Span | None) -> Iterator[None]:
        if span is not None:
            self._stack.append(span)
        try:
            yield
        finally:
            if span is not None and self._stack and self._stack[-1] is span:
                self._stack.pop()

    # ------------------------------------------------------------------ run hooks
    def on_start(self, run: ExperimentRunner) -> None:
        """Open the tracer provider and the run's root span; wrap replay, evals, policy."""
        from openinference.instrumentation.openai import OpenAIInstrumentor

        from selfimprove_rl.telemetry.tracing import setup_tracing

        instrument = (
            self.instrument_openai and not OpenAIInstrumentor().is_instrumented_by_opentelemetry
        )
        self._provider = setup_tracing(
            self.endpoint, self.project, batch=self.batch, instrument_openai=instrument
        )
        self._tracer = self._provider.get_tracer("selfimprove_rl.optimizer")
        config = run.config
        provenance = run.checkpoint.provenance if run.checkpoint is not None else None
        self._root = self._begin(
            f"optimize {config.name}",
            "AGENT",
            {
                "input.value": config.model_dump_json(),
                "input.mime_type": "application/json",
                ATTR + "run_dir": str(run.run_dir),
                ATTR + "experiment": config.name,
                ATTR + "policy": config.policy.name,
                ATTR + "seed": config.seed,
                ATTR + "backend": config.backend.describe(),
                ATTR + "resumed": run.resume,
                ATTR + "data": None
                if provenance is None
                else provenance.model_dump(mode="json", exclude_none=True),
                ATTR + "baseline_version": run.registry.baseline_id,
            },
        )
        if self._root is not None:
            self.trace_id = format(self._root.get_span_context().trace_id, "032x")
        self._wrap(run)

    def on_episode_start(self, run: ExperimentRunner, episode: int) -> None:
        """Close the previous episode span and open the next."""
        self._close_episode()
        self._episode = self._begin(
            f"episode {episode}",
            "CHAIN",
            {ATTR + "episode": episode, ATTR + "live_version": run.registry.live_id},
            parent=self._root,
        )
        self._episode_totals = {"steps": 0, "reward": 0.0, "promotions": 0}

    def on_step_start(self, run: ExperimentRunner, step: int) -> None:
        """Open the step's span (the coach, replays, evals and gate nest beneath)."""
        self._step = self._begin(
            f"step {step}",
            "CHAIN",
            {ATTR + "step": step},
            parent=self._episode or self._root,
        )

    def on_step_end(self, run: ExperimentRunner, line: Mapping[str, Any]) -> None:
        """Record the step's outcome (versions, directive, reward, scores, calls, gate)."""
        gate = line.get("gate") or {}
        scores = line.get("scores") or {}
        base_scores = line.get("base_scores") or {}
        invalid = line.get("invalid_edit")
        outcome = {
            "reward": line.get("reward"),
            "accepted": line.get("accepted"),
            "scores": scores,
            "base_scores": base_scores,
            "gate": gate or None,
            "invalid_edit": invalid,
        }
        self._end(
            self._step,
            {
                "input.value": line.get("directive") or "",
                "output.value": json.dumps(outcome, default=str),
                "output.mime_type": "application/json",
                ATTR + "episode": line.get("episode"),
                ATTR + "episode_step": line.get("episode_step"),
                ATTR + "directive": line.get("directive") or "",
                ATTR + "base_version": line.get("base_version"),
                ATTR + "version_id": line.get("version_id"),
                ATTR + "current_version": line.get("current_version"),
                ATTR + "live_version": line.get("live_version"),
                ATTR + "reward": float(line.get("reward") or 0.0),
                ATTR + "accepted": bool(line.get("accepted")),
                ATTR + "invalid_edit": invalid,
                **{f"{ATTR}scores.{name}": value for name, value in scores.items()},
                **{f"{ATTR}base_scores.{name}": value for name, value in base_scores.items()},
                ATTR + "calls": line.get("calls"),
                ATTR + "tokens": line.get("tokens"),
                ATTR + "gate.promoted": gate.get("promoted") if gate else None,
                ATTR + "gate.delta": gate.get("delta") if gate else None,
                ATTR + "gate.reason": gate.get("reason") if gate else None,
                ATTR + "live_test": line.get("live_test"),
                ATTR + "terminated": bool(line.get("terminated")),
                ATTR + "truncated": bool(line.get("truncated")),
            },
        )
        self._step = None
        totals = self._episode_totals
        totals["steps"] = totals.get("steps", 0) + 1
        totals["reward"] = totals.get("reward", 0.0) + float(line.get("reward") or 0.0)
        totals["last_version"] = line.get("current_version")
        if gate and gate.get("promoted"):
            totals["promotions"] = totals.get("promotions", 0) + 1

    def on_loop_end(self, run: ExperimentRunner, reason: str) -> None:
        """Close the last episode; the final report's scoring nests under a ``report`` span."""
        self._close_episode()
        self._report = self._begin(
            "report", "CHAIN", {ATTR + "stopped_because": reason}, parent=self._root
        )

    def on_promotion(self, run: ExperimentRunner, version_id: str, decision: GateDecision) -> None:
        """Mark the promotion as an event on the step (and the run)."""
        try:
            attributes = _attributes(
                {"version_id": version_id, "delta": decision.delta, "reason": decision.reason}
            )
            for span in (self._step, self._root):
                if span is not None:
                    span.add_event("promoted", attributes)
        except Exception as exc:
            self._failed("record a promotion", exc)

    def on_finish(self, run: ExperimentRunner, summary: Mapping[str, Any]) -> None:
        """Put the run's summary on the root span."""
        if self._root is None:
            return
        keys = ("promoted_version", "train", "test", "holdout", "calls", "steps", "promotions")
        try:
            self._root.set_attributes(
                _attributes(
                    {
                        "output.value": json.dumps(summary, default=str),
                        "output.mime_type": "application/json",
                        **{ATTR + key: summary.get(key) for key in keys},
                        **{
                            f"{ATTR}baseline.{split}": value
                            for split, value in (summary.get("baseline") or {}).items()
                        },
                        ATTR + "stopped_because": summary.get("stopped_because"),
                    }
                )
            )
        except Exception as exc:
            self._failed("record the summary", exc)

    def on_close(self, run: ExperimentRunner, error: BaseException | None) -> None:
        """End open spans, unwrap, flush and shut the provider down; note the trace in the run."""
        for undo in reversed(self._restore):
            try:
                undo()
            except Exception as exc:
                self._failed("unwrap", exc)
        self._restore.clear()
        self._end(self._step, error=error)
        self._step = None
        self._close_episode(error)
        self._end(self._report, error=error)
        self._report = None
        self._end(self._root, error=error)
        self._root = None
        if self._provider is not None:
            from selfimprove_rl.telemetry.tracing import teardown_tracing

            try:
                teardown_tracing(self._provider)
            except Exception as exc:
                self._failed("flush the provider", exc)
            self._provider = None
        self._tracer = None
        self._note(run)

    def _close_episode(self, error: BaseException | None = None) -> None:
        if self._episode is None:
            return
        totals = self._episode_totals
        self._end(
            self._episode,
            {
                ATTR + "steps": totals.get("steps", 0),
                ATTR + "total_reward": totals.get("reward", 0.0),
                ATTR + "promotions": totals.get("promotions", 0),
                ATTR + "last_version": totals.get("last_version"),
            },
            error,
        )
        self._episode = None

    def _note(self, run: ExperimentRunner) -> None:
        if self.trace_id is None:
            return
        try:
            record = PhoenixRunRecord.load(run.run_dir, endpoint=self.endpoint)
            record.optimizer = OptimizerTraceRecord(
                project=self.project, trace_id=self.trace_id, spans=self.spans
            )
            record.save(run.run_dir)
        except Exception as exc:
            self._failed("write phoenix.json", exc)

    # ------------------------------------------------------------------ wrappers
    def _wrap(self, run: ExperimentRunner) -> None:
        env = run.env.unwrapped
        self._patch(env.replayer, "replay", self._traced_replay(env.replayer.replay))
        for evaluator in env.evaluators:
            self._patch(evaluator, "evaluate", self._traced_eval(evaluator, evaluator.evaluate))
        self._patch(env, "score_version", self._traced_score(env.score_version))
        if hasattr(env, "score_samples"):
            self._patch(env, "score_samples", self._traced_chunk(env.score_samples))
        self._patch(run.policy, "act", self._traced_act(run.config.policy.name, run.policy.act))

    def _patch(self, owner: Any, name: str, replacement: Callable[..., Any]) -> None:
        """Shadow a bound method by an instance attribute; undone in :meth:`on_close`."""
        try:
            setattr(owner, name, replacement)
        except (AttributeError, TypeError, ValueError) as exc:
            self._failed(f"wrap {type(owner).__name__}.{name}", exc)
            return

        def undo() -> None:
            if name in vars(owner):
                delattr(owner, name)

        self._restore.append(undo)

    def _traced_replay(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        async def replay(samples: Sequence[Any], action: Any, **kwargs: Any) -> Any:
            span = self._begin(
                "replay",
                "CHAIN",
                {
                    ATTR + "replay.samples": len(samples),
                    "llm.model_name": getattr(action, "model", None),
                    ATTR + "system_prompt": getattr(action, "system_prompt", None),
                },
            )
            try:
                report = await original(samples, action, **kwargs)
            except BaseException as exc:
                self._end(span, error=exc)
                raise
            usage = report.usage
            self._end(
                span,
                {
                    ATTR + "replay.calls": usage.calls,
                    ATTR + "replay.cache_hits": usage.cache_hits,
                    ATTR + "replay.failures": usage.failures,
                    "llm.token_count.prompt": usage.prompt_tokens,
                    "llm.token_count.completion": usage.completion_tokens,
                },
            )
            return report

        return replay

    def _traced_eval(self, evaluator: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        name = str(getattr(evaluator, "name", type(evaluator).__name__))

        @functools.wraps(original)
        async def evaluate(items: Sequence[Any]) -> Any:
            calls_before = getattr(evaluator, "calls", None)
            span = self._begin(f"eval {name}", "EVALUATOR", {ATTR + "eval.items": len(items)})
            try:
                results = await original(items)
            except BaseException as exc:
                self._end(span, error=exc)
                raise
            scores = [float(r.score) for r in results]
            calls_after = getattr(evaluator, "calls", None)
            self._end(
                span,
                {
                    ATTR + "eval.name": name,
                    ATTR + "eval.mean_score": sum(scores) / len(scores) if scores else None,
                    ATTR + "eval.errors": sum(1 for r in results if r.error is not None),
                    ATTR + "eval.judge_calls": calls_after - calls_before
                    if isinstance(calls_before, int) and isinstance(calls_after, int)
                    else None,
                },
            )
            return results

        return evaluate

    def _traced_chunk(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """A sequential gate's look at a chunk of test samples: ``score test <candidate>``."""

        @functools.wraps(original)
        def score_samples(version_ids: Any, samples: Any) -> Any:
            ids = [str(v) for v in version_ids]
            span = self._begin(
                f"score test {ids[0] if ids else ''}",
                "CHAIN",
                {ATTR + "version_ids": ids, ATTR + "split": "test", ATTR + "samples": len(samples)},
            )
            with self._pushed(span):
                try:
                    tables = original(version_ids, samples)
                except BaseException as exc:
                    self._end(span, error=exc)
                    raise
            self._end(span, {ATTR + "score.samples": len(samples)})
            return tables

        return score_samples

    def _traced_score(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def score_version(version_id: str, split: str) -> Any:
            span = self._begin(
                f"score {split} {version_id}",
                "CHAIN",
                {ATTR + "version_id": version_id, ATTR + "split": split},
            )
            with self._pushed(span):
                try:
                    score, table = original(version_id, split)
                except BaseException as exc:
                    self._end(span, error=exc)
                    raise
            self._end(
                span,
                {
                    ATTR + "score.aggregate": score.aggregate,
                    **{f"{ATTR}score.eval.{name}": v for name, v in score.per_eval.items()},
                    ATTR + "score.samples": score.n,
                    ATTR + "score.failed": score.failed,
                },
            )
            return score, table

        return score_version

    def _traced_act(self, policy: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def act(observation: Any, info: Any) -> Any:
            from opentelemetry import trace

            span = self._begin("policy.act", "AGENT", {ATTR + "policy": policy})
            if span is None:
                return original(observation, info)
            with self._pushed(span), trace.use_span(span, end_on_exit=False):
                try:
                    action = original(observation, info)
                except BaseException as exc:
                    self._end(span, error=exc)
                    raise
            self._end(span, {"output.value": _describe_action(action)})
            return action

        return act

    @property
    def provider(self) -> TracerProvider | None:
        """The tracer provider while the run is traced (never the global one)."""
        return self._provider
