"""What did each Phoenix eval decide, with which template, on which span? The eval instrumentor.

:func:`instrument_evals` wraps (with ``wrapt``) the two methods every Phoenix-evals
classification goes through, ``ClassificationEvaluator._evaluate`` and ``_async_evaluate``.
That catches ``evaluator.evaluate()``, ``async_evaluate()``, ``evaluate_dataframe``,
``async_evaluate_dataframe`` and the built-in metrics that subclass the classifier
(correctness, faithfulness...), however early they were imported. For each classification it
writes to Phoenix:

* an **evaluator span** (``openinference.span.kind = EVALUATOR``) carrying the eval constants
  (name, template, template variables, rails and label-to-score map, judge model and
  provider, judge parameters) as JSON under ``selfimprove.eval.constants`` with a content
  hash ``selfimprove.eval.constants_id``, and the result with its template-variable values.
  When the evaluated span's trace is known, the evaluator span is its child, so Phoenix shows
  the verdict inside the trace;
* a **span annotation** on the evaluated LLM span (name = eval name, label, score,
  explanation, identifier ``selfimprove-rl``), whose metadata holds
  ``selfimprove.constants_id`` and ``selfimprove.variables``, so a later fetch can re-run the
  eval on a new output with the same reference and context. The identifier keeps it apart
  from the annotation of the same name a user logs with ``log_span_annotations_dataframe``
  (Phoenix upserts on name, span and identifier, so without it the two would overwrite each
  other).

The judge's own LLM calls run under ``suppress_tracing()``, so they never land in the traced
project as if they were production traffic.

**Which span was evaluated?** Say it in one of three ways (the row wins when several are
given):

1. a ``span_id`` (or ``context.span_id``) key in the eval input row, with an optional
   ``trace_id`` (or ``context.trace_id``); evaluators ignore keys they do not use;
2. with ``evaluate_dataframe`` / ``async_evaluate_dataframe``, a dataframe index whose name
   holds ``span_id`` — the way Phoenix's own guide does it (``get_spans_dataframe``, then
   ``set_index("context.span_id")``, ``evaluate_dataframe``, ``to_annotation_dataframe``,
   ``log_span_annotations_dataframe``): the row's index value is added to its eval input
   as ``context.span_id`` (the rule ``to_annotation_dataframe`` uses to find span ids);
3. the context manager :func:`evaluating` around the call::

       with evaluating(span_id, trace_id):
           classifier.evaluate({"input": ..., "output": ...})

A classification with no evaluated span still gets its evaluator span (the constants stay
recoverable) but no annotation; it is counted in :attr:`EvalRecorder.stats`.

Annotations are written from a background thread; :func:`flush_evals` waits for them, and
they are flushed when the process exits too (an ``atexit`` hook, with a time limit), so a
script that never calls :func:`uninstrument_evals` loses nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import hashlib
import importlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel

from selfimprove_rl.errors import ConfigError, TelemetryError
from selfimprove_rl.telemetry.tracing import base_url_of, split_endpoint

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

logger = logging.getLogger(__name__)

SPAN_ID_KEYS = ("span_id", "context.span_id")
TRACE_ID_KEYS = ("trace_id", "context.trace_id")
ATTR = "selfimprove.eval."
META_CONSTANTS_ID = "selfimprove.constants_id"
META_VARIABLES = "selfimprove.variables"
META_EVAL_SPAN_ID = "selfimprove.eval_span_id"
ANNOTATION_IDENTIFIER = "selfimprove-rl"
EXIT_FLUSH_TIMEOUT_S = 30.0
_SECRET_KEY = re.compile(r"api[_-]?key|secret|password|authorization|bearer", re.IGNORECASE)
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_EVALUATORS_MODULE = "phoenix.evals.evaluators"


@dataclass(frozen=True)
class EvaluatedSpan:
    """The LLM span a classification is about."""

    span_id: str
    trace_id: str | None = None


_current: contextvars.ContextVar[EvaluatedSpan | None] = contextvars.ContextVar(
    "selfimprove_evaluated_span", default=None
)


@contextlib.contextmanager
def evaluating(span_id: str, trace_id: str | None = None) -> Iterator[EvaluatedSpan]:
    """Mark the Phoenix-evals calls inside the block as evaluations of one LLM span.

    Works around sync and async calls alike (it sets a context variable).

    Args:
        span_id: the evaluated span's id (16 hex digits, as Phoenix shows it).
        trace_id: its trace id (32 hex digits); makes the evaluator span its child.

    Yields:
        The evaluated span.
    """
    target = EvaluatedSpan(str(span_id), str(trace_id) if trace_id else None)
    token = _current.set(target)
    try:
        yield target
    finally:
        _current.reset(token)


def _link_from_row(eval_input: object) -> EvaluatedSpan | None:
    if not isinstance(eval_input, Mapping):
        return None
    span_id = next((eval_input[k] for k in SPAN_ID_KEYS if _present(eval_input.get(k))), None)
    if span_id is None:
        return None
    trace_id = next((eval_input[k] for k in TRACE_ID_KEYS if _present(eval_input.get(k))), None)
    return EvaluatedSpan(str(span_id), str(trace_id) if trace_id is not None else None)


def _present(value: object) -> bool:
    return value is not None and value == value and value != ""  # NaN != NaN


class RecorderStats(BaseModel):
    """Counters of one instrumentation session."""

    classifications: int = 0
    failed_classifications: int = 0
    linked: int = 0
    unlinked: int = 0
    invalid_span_ids: int = 0
    annotations_written: int = 0
    annotations_deferred: int = 0
    annotation_failures: int = 0
    record_failures: int = 0


def constants_of(evaluator: Any) -> dict[str, Any]:
    """The eval constants of a Phoenix ``ClassificationEvaluator``, as a JSON-safe dict.

    Keys match :class:`selfimprove_rl.checkpoint.EvalConstants` (``choices`` is ``None``
    when the rails carry no scores).
    """
    template = evaluator.prompt_template.template
    if isinstance(template, str):
        template_text, template_format = template, "string"
    else:
        template_text = json.dumps(_jsonable(template), ensure_ascii=False)
        template_format = "messages"
    labels = evaluator.labels
    descriptions = dict(labels) if isinstance(labels, Mapping) else {}
    score_map = evaluator.label_score_map
    llm = evaluator.llm
    return {
        "name": evaluator.name,
        "kind": "classifier",
        "evaluator_class": f"{type(evaluator).__module__}.{type(evaluator).__qualname__}",
        "template": template_text,
        "template_format": template_format,
        "template_variables": sorted(evaluator.prompt_template.variables),
        "labels": list(labels),
        "choices": {k: float(v) for k, v in score_map.items()} if score_map else None,
        "label_descriptions": {str(k): str(v) for k, v in descriptions.items()},
        "eval_model": getattr(llm, "model", None),
        "eval_provider": getattr(llm, "provider", None),
        "direction": evaluator.direction,
        "include_explanation": bool(getattr(evaluator, "include_explanation", True)),
        "eval_parameters": {
            k: _jsonable(v)
            for k, v in (getattr(evaluator, "invocation_parameters", None) or {}).items()
            if not _SECRET_KEY.search(str(k))
        },
    }


def constants_id(constants: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit content hash of eval constants."""
    canonical = json.dumps(constants, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def variable_text(value: Any) -> str:
    """A template variable value as the text the template received (JSON for non-strings)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


class _AnnotationWriter:
    """Writes span annotations to Phoenix from a background thread, in batches.

    Each batch is sent with ``sync=True`` so that :meth:`flush` means "readable now". A batch
    naming spans Phoenix has not ingested yet (404) is retried without them; those are
    resent a few times and finally handed to Phoenix's own deferred insertion (``sync=False``),
    which waits for the span to arrive.
    """

    def __init__(
        self,
        base_url: str,
        stats: RecorderStats,
        batch_size: int = 100,
        api_key: str | None = None,
    ) -> None:
        from phoenix.client import Client

        self._client = Client(base_url=base_url, api_key=api_key)
        self._stats = stats
        self._batch_size = batch_size
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="selfimprove-annotations")
        self._thread.daemon = True
        self._thread.start()

    def put(self, annotation: dict[str, Any]) -> None:
        with self._cond:
            self._pending += 1
        self._queue.put(annotation)

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float) -> None:
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < self._batch_size:
                    item = self._queue.get(timeout=0.05)
                    if item is None:
                        self._send(batch)
                        return
                    batch.append(item)
            self._send(batch)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        try:
            self._send_with_retries(batch)
        except Exception as exc:  # never let the thread die; count and log
            self._stats.annotation_failures += len(batch)
            logger.warning("Could not write %d eval annotations to Phoenix: %s", len(batch), exc)
        finally:
            with self._cond:
                self._pending -= len(batch)
                self._cond.notify_all()

    def _send_with_retries(self, batch: list[dict[str, Any]], attempts: int = 6) -> None:
        import httpx

        waiting = list(batch)
        for attempt in range(attempts):
            if not waiting:
                return
            try:
                self._client.spans.log_span_annotations(
                    span_annotations=cast(Any, waiting), sync=True
                )
                self._stats.annotations_written += len(waiting)
                return
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 404:
                    raise
                missing = set(re.findall(r"[0-9a-f]{16}", exc.response.text))
                ready = [a for a in waiting if a["span_id"] not in missing]
                waiting = [a for a in waiting if a["span_id"] in missing]
                if not missing or not waiting:
                    raise
                if ready:
                    self._client.spans.log_span_annotations(
                        span_annotations=cast(Any, ready), sync=True
                    )
                    self._stats.annotations_written += len(ready)
                time.sleep(0.2 * 2**attempt)
        self._client.spans.log_span_annotations(span_annotations=cast(Any, waiting), sync=False)
        self._stats.annotations_deferred += len(waiting)
        logger.warning(
            "%d eval annotations name spans Phoenix has not ingested; handed to its deferred "
            "insertion (they appear when the spans do).",
            len(waiting),
        )


class EvalRecorder:
    """Writes what the instrumentor sees to Phoenix; one per :func:`instrument_evals` call.

    Attributes:
        stats: counters (classifications, linked / unlinked, annotations written...).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider,
        base_url: str,
        *,
        annotator_kind: Literal["LLM", "CODE", "HUMAN"] = "LLM",
        api_key: str | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.base_url = base_url
        self.annotator_kind = annotator_kind
        self.stats = RecorderStats()
        self._tracer: Tracer = tracer_provider.get_tracer("selfimprove_rl.telemetry.instrument")
        self._writer = _AnnotationWriter(base_url, self.stats, api_key=api_key)
        self._constants_cache: dict[int, tuple[Any, dict[str, Any], str]] = {}
        self._warned_unlinked = False

    def _constants(self, evaluator: Any) -> tuple[dict[str, Any], str]:
        cached = self._constants_cache.get(id(evaluator))
        if cached is not None and cached[0] is evaluator:
            return cached[1], cached[2]
        constants = constants_of(evaluator)
        cid = constants_id(constants)
        self._constants_cache[id(evaluator)] = (evaluator, constants, cid)
        return constants, cid

    def record(
        self,
        evaluator: Any,
        eval_input: Mapping[str, Any],
        scores: list[Any] | None,
        start_ns: int,
        end_ns: int,
        error: BaseException | None = None,
    ) -> None:
        """Write one classification (never raises; failures are counted and logged)."""
        try:
            self._record(evaluator, eval_input, scores, start_ns, end_ns, error)
        except Exception as exc:
            self.stats.record_failures += 1
            logger.warning("selfimprove-rl could not record a Phoenix eval: %s", exc)

    def _record(
        self,
        evaluator: Any,
        eval_input: Mapping[str, Any],
        scores: list[Any] | None,
        start_ns: int,
        end_ns: int,
        error: BaseException | None,
    ) -> None:
        self.stats.classifications += 1
        if error is not None:
            self.stats.failed_classifications += 1
        constants, cid = self._constants(evaluator)
        variables = {str(k): variable_text(v) for k, v in eval_input.items()}
        score = scores[0] if scores else None
        result = {
            "label": getattr(score, "label", None),
            "score": getattr(score, "score", None),
            "explanation": getattr(score, "explanation", None),
        }
        span_id, trace_id = self._linked_span(constants["name"])
        attributes: dict[str, Any] = {
            "openinference.span.kind": "EVALUATOR",
            "input.value": json.dumps(variables, ensure_ascii=False),
            "input.mime_type": "application/json",
            "output.value": json.dumps(result, ensure_ascii=False),
            "output.mime_type": "application/json",
            ATTR + "name": constants["name"],
            ATTR + "constants_id": cid,
            ATTR + "constants": json.dumps(constants, ensure_ascii=False),
            ATTR + "variables": json.dumps(variables, ensure_ascii=False),
        }
        for key, value in result.items():
            if value is not None:
                attributes[ATTR + key] = value
        if span_id:
            attributes[ATTR + "span_id"] = span_id
        if trace_id:
            attributes[ATTR + "trace_id"] = trace_id
        eval_span_id = self._write_span(
            f"{constants['name']}.classify",
            attributes,
            (span_id, trace_id),
            (start_ns, end_ns),
            error,
        )
        if error is not None or score is None:
            return
        if span_id is None:
            self._count_unlinked(constants["name"])
            return
        self.stats.linked += 1
        annotation: dict[str, Any] = {
            "name": constants["name"],
            "annotator_kind": self.annotator_kind,
            "identifier": ANNOTATION_IDENTIFIER,
            "span_id": span_id,
            "result": {k: v for k, v in result.items() if v is not None},
            "metadata": {
                META_CONSTANTS_ID: cid,
                META_VARIABLES: variables,
                META_EVAL_SPAN_ID: eval_span_id,
            },
        }
        self._writer.put(annotation)

    def _linked_span(self, eval_name: str) -> tuple[str | None, str | None]:
        """Return the evaluated span's id and trace id (lower-case hex), when valid.

        An invalid span id is counted and warned about; the eval is then recorded unlinked.
        """
        link = _current.get()
        span_id = link.span_id.lower() if link else None
        trace_id = link.trace_id.lower() if link and link.trace_id else None
        if span_id is not None and not _HEX16.match(span_id):
            self.stats.invalid_span_ids += 1
            logger.warning(
                "Eval %r names span id %r; expected 16 hex digits. Recorded without a link.",
                eval_name,
                link.span_id if link else None,
            )
            return None, None
        if trace_id is not None and not _HEX32.match(trace_id):
            trace_id = None
        return span_id, trace_id

    def _write_span(
        self,
        name: str,
        attributes: dict[str, Any],
        link: tuple[str | None, str | None],
        times_ns: tuple[int, int],
        error: BaseException | None,
    ) -> str:
        """Write the evaluator span (a child of the evaluated span when both ids are known).

        Returns:
            The new span's id as 16 hex digits.
        """
        from opentelemetry import trace
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            Status,
            StatusCode,
            TraceFlags,
        )

        span_id, trace_id = link
        parent = None
        if span_id and trace_id:
            parent = trace.set_span_in_context(
                NonRecordingSpan(
                    SpanContext(
                        trace_id=int(trace_id, 16),
                        span_id=int(span_id, 16),
                        is_remote=True,
                        trace_flags=TraceFlags(TraceFlags.SAMPLED),
                    )
                )
            )
        span = self._tracer.start_span(
            name, context=parent, start_time=times_ns[0], attributes=attributes
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        else:
            span.set_status(Status(StatusCode.OK))
        eval_span_id = format(span.get_span_context().span_id, "016x")
        span.end(end_time=times_ns[1])
        return eval_span_id

    def _count_unlinked(self, eval_name: str) -> None:
        """Count an eval that ran without an evaluated span (warned about once)."""
        self.stats.unlinked += 1
        if not self._warned_unlinked:
            self._warned_unlinked = True
            logger.warning(
                "Eval %r ran without an evaluated span: add a 'span_id' key to the eval "
                "input or wrap the call in `evaluating(span_id)`. Its constants are "
                "recorded; its result cannot be attached to a span.",
                eval_name,
            )

    def flush(self, timeout: float = 30.0) -> bool:
        """Export pending evaluator spans and write pending annotations; True when done."""
        spans_done = bool(self.tracer_provider.force_flush(int(timeout * 1000)))  # type: ignore[attr-defined]
        return self._writer.flush(timeout) and spans_done

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the background writer."""
        self.flush(timeout)
        self._writer.close(timeout)


class _Instrumentation:
    def __init__(self, recorder: EvalRecorder, suppress_judge_tracing: bool) -> None:
        self.recorder = recorder
        self.suppress = suppress_judge_tracing


_state: _Instrumentation | None = None
_state_lock = threading.Lock()


def _judge_context(suppress: bool) -> contextlib.AbstractContextManager[Any]:
    if not suppress:
        return contextlib.nullcontext()
    from openinference.instrumentation import suppress_tracing

    return suppress_tracing()


def _eval_input_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("eval_input")


def _classify_sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    state = _state
    if state is None:
        return wrapped(*args, **kwargs)
    eval_input = _eval_input_of(args, kwargs)
    start = time.time_ns()
    try:
        with _judge_context(state.suppress):
            scores = wrapped(*args, **kwargs)
    except Exception as exc:
        state.recorder.record(instance, eval_input or {}, None, start, time.time_ns(), exc)
        raise
    state.recorder.record(instance, eval_input or {}, scores, start, time.time_ns())
    return scores


async def _classify_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    state = _state
    if state is None:
        return await wrapped(*args, **kwargs)
    eval_input = _eval_input_of(args, kwargs)
    start = time.time_ns()
    try:
        with _judge_context(state.suppress):
            scores = await wrapped(*args, **kwargs)
    except Exception as exc:
        state.recorder.record(instance, eval_input or {}, None, start, time.time_ns(), exc)
        raise
    state.recorder.record(instance, eval_input or {}, scores, start, time.time_ns())
    return scores


def _link_sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    link = _link_from_row(_eval_input_of(args, kwargs))
    if link is None:
        return wrapped(*args, **kwargs)
    token = _current.set(link)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _current.reset(token)


async def _link_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    link = _link_from_row(_eval_input_of(args, kwargs))
    if link is None:
        return await wrapped(*args, **kwargs)
    token = _current.set(link)
    try:
        return await wrapped(*args, **kwargs)
    finally:
        _current.reset(token)


def _link_dataframe_index(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """After Phoenix turns a dataframe into eval inputs, add the span id from the index."""
    prepared = wrapped(*args, **kwargs)
    dataframe = args[0] if args else kwargs.get("dataframe")
    try:
        _add_index_span_ids(dataframe, prepared[1])
    except Exception as exc:  # never break the user's evaluation over a link
        logger.warning("selfimprove-rl could not read span ids from the dataframe index: %s", exc)
    return prepared


def _add_index_span_ids(dataframe: Any, eval_inputs: Mapping[int, dict[str, Any]]) -> None:
    index = getattr(dataframe, "index", None)
    name = getattr(index, "name", None)
    if index is None or not isinstance(name, str) or "span_id" not in name.lower():
        return
    key = name if name in SPAN_ID_KEYS else SPAN_ID_KEYS[1]
    for position, span_id in enumerate(index):
        row = eval_inputs.get(position)
        if row is not None and not any(_present(row.get(k)) for k in SPAN_ID_KEYS):
            row[key] = span_id


_PATCHES = (
    ("ClassificationEvaluator._evaluate", _classify_sync),
    ("ClassificationEvaluator._async_evaluate", _classify_async),
    ("Evaluator.evaluate", _link_sync),
    ("Evaluator.async_evaluate", _link_async),
    # Private in phoenix-evals 3.x; both evaluate_dataframe functions call it by its module
    # name, so wrapping it reaches them however they were imported. Skipped when absent.
    ("_prepare_dataframe_evaluation", _link_dataframe_index),
)


def instrument_evals(
    tracer_provider: TracerProvider | None = None,
    *,
    endpoint: str | None = None,
    annotator_kind: Literal["LLM", "CODE", "HUMAN"] = "LLM",
    suppress_judge_tracing: bool = True,
    api_key: str | None = None,
) -> EvalRecorder:
    """Record every Phoenix-evals classification to Phoenix (see the module docstring).

    Idempotent: a second call with the same provider returns the active recorder.

    Args:
        tracer_provider: where evaluator spans go (its project is the one the source reads
            eval constants from). Defaults to the global OpenTelemetry provider.
        endpoint: the Phoenix base URL for annotations. Defaults to the URL the provider was
            made with by :func:`~selfimprove_rl.telemetry.tracing.setup_tracing`.
        annotator_kind: the annotator kind written on the annotations.
        suppress_judge_tracing: run the judge's LLM calls under ``suppress_tracing()`` so they
            stay out of the traced project.
        api_key: for a Phoenix with authentication (used for the annotations only).

    Returns:
        The recorder (``flush()`` before reading back; ``stats`` for counters).

    Raises:
        ConfigError: no usable tracer provider or endpoint, or already instrumented with a
            different provider.
    """
    import wrapt
    from opentelemetry import trace

    global _state
    provider = tracer_provider
    if provider is None:
        provider = trace.get_tracer_provider()
        if not hasattr(provider, "force_flush"):
            raise ConfigError(
                "instrument_evals() needs a tracer provider that exports to Phoenix; the "
                "global one is a no-op. Pass tracer_provider=setup_tracing(endpoint, project) "
                "or your own SDK TracerProvider."
            )
    base = base_url_of(provider)
    if endpoint is not None:
        base = split_endpoint(endpoint)[0]
    if base is None:
        raise ConfigError(
            "instrument_evals() needs the Phoenix URL to write annotations: pass "
            "endpoint='http://host:6006' (the provider was not made by setup_tracing())."
        )
    with _state_lock:
        if _state is not None:
            if _state.recorder.tracer_provider is provider:
                return _state.recorder
            raise ConfigError(
                "Phoenix evals are already instrumented with another tracer provider; call "
                "uninstrument_evals() first."
            )
        recorder = EvalRecorder(provider, base, annotator_kind=annotator_kind, api_key=api_key)
        module = importlib.import_module(_EVALUATORS_MODULE)
        for name, wrapper in _PATCHES:
            if _lookup(module, name) is not None:
                wrapt.wrap_function_wrapper(module, name, wrapper)
        _state = _Instrumentation(recorder, suppress_judge_tracing)
        _register_exit_flush()
    return recorder


def _lookup(module: Any, dotted: str) -> Any:
    owner: Any = module
    for part in dotted.split("."):
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return owner


_exit_flush_registered = False


def _register_exit_flush() -> None:
    global _exit_flush_registered
    if not _exit_flush_registered:
        _exit_flush_registered = True
        atexit.register(_flush_at_exit)


def _flush_at_exit() -> None:
    """Write what is still queued when the process ends without uninstrument_evals()."""
    state = _state
    if state is None:
        return
    if not state.recorder.flush(EXIT_FLUSH_TIMEOUT_S):
        logger.warning(
            "selfimprove-rl: eval annotations were still being written to Phoenix after %.0f s "
            "at exit; some may be missing. Call flush_evals() before exiting.",
            EXIT_FLUSH_TIMEOUT_S,
        )


def uninstrument_evals(timeout: float = 30.0) -> RecorderStats | None:
    """Flush what was recorded and remove the wrappers. Idempotent.

    Returns:
        The final counters, or None when nothing was instrumented.
    """
    global _state
    with _state_lock:
        state, _state = _state, None
        if state is None:
            return None
        module = importlib.import_module(_EVALUATORS_MODULE)
        for name, _wrapper in _PATCHES:
            *owners, attr = name.split(".")
            owner = _lookup(module, ".".join(owners)) if owners else module
            if owner is None or _lookup(owner, attr) is None:
                continue  # not present in this phoenix-evals version, so never wrapped
            current = vars(owner).get(attr)
            original = getattr(current, "__wrapped__", None)
            if original is None:
                raise TelemetryError(f"{name} is not wrapped; was it patched by someone else?")
            setattr(owner, attr, original)
    state.recorder.close(timeout)
    return state.recorder.stats


def flush_evals(timeout: float = 30.0) -> bool:
    """Flush the active recorder (no-op returning True when not instrumented)."""
    state = _state
    return state.recorder.flush(timeout) if state is not None else True


def is_instrumented() -> bool:
    """Whether :func:`instrument_evals` is active."""
    return _state is not None
