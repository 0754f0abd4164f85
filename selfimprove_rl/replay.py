"""What would the call say now? Replay logged samples under a candidate action.

A :class:`Replayer` sends ``[system] + chat_history`` of every sample, under a candidate
:class:`~selfimprove_rl.checkpoint.Action`, through an ``openai.AsyncOpenAI`` client (real
OpenAI, any OpenAI-compatible ``base_url``, or the simulated model's in-process transport:
one code path). It owns what a careful client needs:

* **a content-addressed cache**: every request is keyed by :func:`request_key` (sha256 of
  the canonical JSON of model, messages and parameters); a key answered before is served
  from the :class:`~selfimprove_rl.cache.ResponseCache` (memory, and disk when it has a
  path), and identical requests in flight (within one replay, or across concurrent replays
  on one replayer) are sent once. Cache hits are served synchronously, without a task each,
  so a fully cached replay costs microseconds per sample;
* **bounded concurrency**: at most ``concurrency`` requests in flight (a fixed pool of worker
  coroutines, so the bound holds by construction);
* **retries** (tenacity) with exponential backoff and jitter, honouring ``Retry-After``, on
  retryable faults only (:func:`is_retryable`: 408/409/429/5xx, timeouts, connection errors,
  malformed or unparseable bodies); other errors (400/401/403/404/422) fail at once;
* **a per-call timeout**, enforced both by the SDK and by ``asyncio.timeout``;
* **no tracing into the application's project**: calls run under OpenInference's
  ``suppress_tracing()``, so an instrumentor set up for production never records replays;
* **accounting**: requests actually sent (retries included), cache hits, failures, and the
  tokens paid for, per replay (:class:`ReplayUsage`) and cumulatively (``Replayer.usage``).

* **a circuit breaker**: a backend that fails every request (a closed port, a server answering
  500 to everything) ends the replay with :class:`BackendUnavailableError` once
  ``max_consecutive_failures`` distinct requests failed in a row (after their retries), or more
  than ``max_failure_rate`` of the last ``failure_window`` did; it stays open until
  :meth:`Replayer.reset_failures`;
* **a call guard**: ``Replayer.call_guard`` (when set) is asked before every request, retries
  included; a request it refuses fails its samples with ``BudgetExhausted`` (not a backend
  failure), which is how a call budget stays hard.

Invariants: ``report.outcomes[i]`` belongs to ``samples[i]``; a failed sample is recorded
with its error and counted, never raised. Only a systemic fault raises :class:`ReplayError`:
every sample failing with the same non-retryable error (a bad API key, an unknown model), or
the circuit breaker above. Pass the client with ``max_retries=0`` so that retries are counted
here, not hidden in the SDK. Every paid response is stored with its cost through
:meth:`~selfimprove_rl.cache.ResponseCache.pay`, every request that failed after sending through
``record_failure``: the cache's ledger is the durable record of what was spent.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, stop_after_attempt
from tenacity.retry import retry_if_exception

from selfimprove_rl.aio import BackgroundLoop
from selfimprove_rl.cache import Payment, ResponseCache
from selfimprove_rl.checkpoint import Action, Sample, message_text
from selfimprove_rl.errors import BackendUnavailableError, BudgetExhausted, ReplayError
from selfimprove_rl.retry import (
    SYSTEMIC_HINTS,
    Backoff,
    FailureMonitor,
    MalformedResponseError,
    failure_reason,
    is_retryable,
    parse_completion,
)

if TYPE_CHECKING:
    import openai

__all__ = [
    "BackendUnavailableError",
    "MalformedResponseError",
    "ReplayConfig",
    "ReplayOutcome",
    "ReplayPlan",
    "ReplayReport",
    "ReplayUsage",
    "Replayer",
    "build_messages",
    "canonical_json",
    "failure_reason",
    "is_retryable",
    "parse_completion",
    "request_key",
]


class ReplayConfig(BaseModel):
    """How a replay talks to the endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    concurrency: int = Field(default=16, ge=1, description="Most requests in flight at once.")
    max_retries: int = Field(
        default=4,
        ge=0,
        description="Retries per request after the first attempt (retryable faults).",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Per-attempt timeout in seconds.")
    backoff_initial_s: float = Field(
        default=0.5,
        ge=0,
        description="Backoff before the first retry (doubles per retry, plus jitter).",
    )
    backoff_max_s: float = Field(
        default=20.0, ge=0, description="Longest wait between attempts, Retry-After included."
    )
    raise_on_systemic: bool = Field(
        default=True,
        description="Raise ReplayError when every sample fails with the same non-retryable error.",
    )
    max_consecutive_failures: int | None = Field(
        default=16,
        ge=1,
        description="Raise BackendUnavailableError after this many distinct requests in a row "
        "failed after their retries (None: never).",
    )
    failure_window: int = Field(
        default=64, ge=1, description="Requests the failure-rate threshold looks back over."
    )
    max_failure_rate: float | None = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Raise BackendUnavailableError when more than this share of the last "
        "failure_window requests failed after their retries (None: never).",
    )
    messages_in_extra_body: bool = Field(
        default=True,
        description="Send messages through the SDK's extra_body: the same JSON on the wire, but "
        "the SDK skips its type-driven transform of the message list (about a fifth of its CPU "
        "per call). Set False when an instrumentor must see them as the `messages` argument.",
    )


class ReplayOutcome(BaseModel):
    """What one sample's replay produced: the assistant message, or the error that stopped it.

    ``prompt_tokens`` / ``completion_tokens`` are the usage of the response this sample got,
    also when it was served from the cache (what the call costs under this action);
    :class:`ReplayUsage` counts only what was paid in this replay.
    """

    model_config = ConfigDict(frozen=True)

    sample_id: str
    message: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    reason: str | None = Field(
        default=None, description="Why the replay failed (see failure_reason); None when ok."
    )
    attempts: int = Field(default=0, description="Requests sent for this sample (0 when cached).")
    cached: bool = Field(default=False, description="Served without sending a request.")
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        """Whether the replay produced a message."""
        return self.error is None and self.message is not None

    @property
    def text(self) -> str:
        """The text of the assistant message ("" when the replay failed)."""
        return message_text(self.message) if self.message is not None else ""


class ReplayUsage(BaseModel):
    """What replays cost: requests sent, cache hits, failures and tokens paid for.

    Example:
        >>> ReplayUsage(calls=2, prompt_tokens=10) + ReplayUsage(calls=1, cache_hits=4)
        ReplayUsage(calls=3, cache_hits=4, failures=0, retries=0, prompt_tokens=10,
                    completion_tokens=0)
    """

    model_config = ConfigDict(frozen=True)

    calls: int = Field(default=0, description="Requests actually sent, retries included.")
    cache_hits: int = Field(default=0, description="Samples served without sending a request.")
    failures: int = Field(default=0, description="Samples whose replay failed.")
    retries: int = Field(default=0, description="Calls beyond the first attempt of a request.")
    prompt_tokens: int = Field(default=0, description="Prompt tokens of the requests paid for.")
    completion_tokens: int = Field(default=0, description="Completion tokens paid for.")

    def __add__(self, other: ReplayUsage) -> ReplayUsage:
        if not isinstance(other, ReplayUsage):
            return NotImplemented
        return ReplayUsage(
            calls=self.calls + other.calls,
            cache_hits=self.cache_hits + other.cache_hits,
            failures=self.failures + other.failures,
            retries=self.retries + other.retries,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens paid for."""
        return self.prompt_tokens + self.completion_tokens


class ReplayReport(BaseModel):
    """The outcome of every sample (same order as the samples) and what the replay cost."""

    model_config = ConfigDict(frozen=True)

    outcomes: list[ReplayOutcome]
    usage: ReplayUsage
    failures_by_type: dict[str, int] = Field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        """The replayed output text of every sample ("" for failed ones)."""
        return [outcome.text for outcome in self.outcomes]

    @property
    def failed(self) -> dict[str, str]:
        """Sample id -> error, for the samples whose replay failed."""
        return {o.sample_id: o.error or "" for o in self.outcomes if not o.ok}


class ReplayPlan(NamedTuple):
    """What a replay would cost now (see :meth:`Replayer.plan`)."""

    outcomes: list[ReplayOutcome | None]
    calls: int


def build_messages(sample: Sample, action: Action) -> list[dict[str, Any]]:
    """Return the messages a replay sends: system prompt, demos as chat turns, then the history.

    Example:
        >>> sample = Sample(sample_id="s", chat_history=[{"role": "user", "content": "hi"}],
        ...                 output_generation={"role": "assistant", "content": "yo"})
        >>> build_messages(sample, Action(system_prompt="Be brief.", model="m"))
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}]
    """
    return [*action.prefix_messages(), *sample.chat_history]


def canonical_json(value: Any) -> str:
    """Serialise ``value`` as canonical JSON (sorted keys, no spaces, no NaN).

    Example:
        >>> canonical_json({"b": 1, "a": [1.5, "é"]})
        '{"a":[1.5,"é"],"b":1}'
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def request_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """Return the content address of a chat request: sha256 of its canonical JSON.

    Args:
        model: the model name.
        messages: the full message list, system prompt included.
        params: the other request parameters (``Action.invocation_parameters()``).

    Returns:
        64 hex digits; equal requests (whatever their dict key order) get equal keys.

    Example:
        >>> a = request_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0.0})
        >>> b = request_key("m", [{"content": "hi", "role": "user"}], {"temperature": 0.0})
        >>> a == b, len(a)
        (True, 64)
    """
    text = canonical_json({"messages": messages, "model": model, "params": params})
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class _Keyer:
    """Compute :func:`request_key` for many samples under one action, hashing the prefix once.

    The canonical JSON of ``{"messages": [system, *demos, *history], "model": m, "params": p}``
    is ``PREFIX + ",".join(history items) + SUFFIX`` (keys sort as messages < model < params),
    so the system prompt and demos are serialised and hashed once per replay, not per sample.
    """

    def __init__(self, action: Action, params: dict[str, Any]) -> None:
        prefix = ",".join(canonical_json(message) for message in action.prefix_messages())
        self._prefix = hashlib.sha256(('{"messages":[' + prefix).encode("utf-8", "surrogatepass"))
        suffix = f'],"model":{canonical_json(action.model)},"params":{canonical_json(params)}}}'
        self._suffix = suffix.encode("utf-8", "surrogatepass")

    def __call__(self, history: list[dict[str, Any]]) -> str:
        hasher = self._prefix.copy()
        if history:
            middle = "," + ",".join(canonical_json(message) for message in history)
            hasher.update(middle.encode("utf-8", "surrogatepass"))
        hasher.update(self._suffix)
        return hasher.hexdigest()


def _ok_outcome(sample_id: str, body: dict[str, Any], attempts: int, cached: bool) -> ReplayOutcome:
    usage = body.get("usage") or {}
    # model_construct: the body was validated by parse_completion; this is the cache-hit path.
    return ReplayOutcome.model_construct(
        sample_id=sample_id,
        message=dict(body["choices"][0]["message"]),
        error=None,
        error_type=None,
        reason=None,
        attempts=attempts,
        cached=cached,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


@dataclass
class _Fetched:
    """The result of one distinct request: a body or the exception that ended it."""

    body: dict[str, Any] | None
    error: BaseException | None
    attempts: int
    shared: bool = False


@dataclass
class _Tally:
    calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def charge(self, paid: Payment) -> None:
        """Count a response paid for earlier (a prepaid ledger entry) as sent now."""
        self.calls += paid.calls
        self.retries += paid.calls - 1
        self.prompt_tokens += paid.prompt_tokens
        self.completion_tokens += paid.completion_tokens


class Replayer:
    """Replays samples under candidate actions through one OpenAI-compatible async client.

    Args:
        client: an ``openai.AsyncOpenAI`` (any ``base_url``); create it with
            ``max_retries=0`` so retries happen, and are counted, here.
        cache: where responses are kept; default a fresh in-memory :class:`ResponseCache`.
            Share one (with a path) across replayers and processes to never pay twice.
        config: concurrency, retries, timeouts.

    Attributes:
        usage: cumulative :class:`ReplayUsage` over every replay of this instance.
        calls_sent: requests sent so far, counted as they leave (``usage`` is updated when a
            replay ends).
        failed_samples: samples whose replay failed, by :func:`failure_reason`.
        failed_attempts: requests that got no usable answer (each retry counts), by reason.
        call_guard: asked before every request; ``False`` refuses it (the sample fails with
            ``BudgetExhausted``). ``None``: no limit.
        prepaid: responses in the cache that a killed process paid for but never accounted
            (key -> its ledger entry): the first replay that uses one is charged what it cost,
            as if it had sent the request itself, so a resumed run counts exactly what an
            uninterrupted one does.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        cache: ResponseCache | None = None,
        config: ReplayConfig | None = None,
    ) -> None:
        self.client = client
        self.cache = cache if cache is not None else ResponseCache()
        self.config = config or ReplayConfig()
        self.usage = ReplayUsage()
        self.calls_sent = 0
        self.failed_samples: Counter[str] = Counter()
        self.failed_attempts: Counter[str] = Counter()
        self.call_guard: Callable[[], bool] | None = None
        self.prepaid: dict[str, Payment] = {}
        self._monitor = FailureMonitor(
            max_consecutive=self.config.max_consecutive_failures,
            window=self.config.failure_window,
            max_rate=self.config.max_failure_rate,
        )
        self._tripped: BackendUnavailableError | None = None
        self._inflight: dict[str, asyncio.Future[_Fetched]] = {}
        self._create = client.chat.completions.with_raw_response.create
        self._create_params = frozenset(
            inspect.signature(client.chat.completions.create).parameters
        )
        self._background: BackgroundLoop | None = None
        self._loop_lock = threading.Lock()
        # Replays are experiments, not production traffic: an OpenInference instrumentor the
        # application set up must not record them into its project.
        from openinference.instrumentation import suppress_tracing

        self._untraced = suppress_tracing

    async def replay(
        self, samples: Sequence[Sample], action: Action, *, progress: bool = False
    ) -> ReplayReport:
        """Replay every sample under ``action``; one outcome per sample, in order.

        Args:
            samples: the logged samples.
            action: the candidate system prompt, model and parameters.
            progress: show a tqdm progress bar.

        Returns:
            The outcomes, this replay's usage and failure counts by error type.

        Raises:
            ReplayError: every sample failed with the same non-retryable error (a systemic
                fault such as a rejected API key); ``usage`` still counts the attempts.
            BackendUnavailableError: the circuit breaker is open (see the module docstring).
        """
        if self._tripped is not None:
            raise self._tripped
        samples = list(samples)
        params = action.invocation_parameters()
        keyer = _Keyer(action, params)
        outcomes: list[ReplayOutcome | None] = [None] * len(samples)
        pending: dict[str, list[int]] = {}
        hits = 0
        tally = _Tally()
        cache_get = self.cache.get
        for index, sample in enumerate(samples):
            key = keyer(sample.chat_history)
            waiting = pending.get(key)
            if waiting is not None:
                waiting.append(index)
                continue
            body = cache_get(key)
            if body is None:
                pending[key] = [index]
                continue
            paid = self.prepaid.pop(key, None) if self.prepaid else None
            if paid is None:
                outcomes[index] = _ok_outcome(sample.sample_id, body, 0, True)
                hits += 1
            else:
                outcomes[index] = _ok_outcome(sample.sample_id, body, paid.calls, False)
                tally.charge(paid)
                self.calls_sent += paid.calls
        errors: list[BaseException] = []
        if pending:
            hits += await self._fetch_all(
                samples, action, params, pending, outcomes, tally, errors, progress
            )

        final = [outcome for outcome in outcomes if outcome is not None]
        failures_by_type = Counter(o.error_type or "unknown" for o in final if not o.ok)
        usage = ReplayUsage(
            calls=tally.calls,
            cache_hits=hits,
            failures=sum(failures_by_type.values()),
            retries=tally.retries,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
        )
        self.usage = self.usage + usage
        self.failed_samples.update(o.reason or "unknown" for o in final if not o.ok)
        if self._tripped is not None:
            raise self._tripped
        assert len(final) == len(samples), "replay left a sample without an outcome"
        report = ReplayReport(outcomes=final, usage=usage, failures_by_type=dict(failures_by_type))
        if self.config.raise_on_systemic:
            self._raise_if_systemic(report, errors, action)
        return report

    def plan(self, samples: Sequence[Sample], action: Action) -> ReplayPlan:
        """Say what replaying ``samples`` under ``action`` would cost now, sending nothing.

        Returns:
            Each sample's cached outcome (``None`` where a request is needed) and the calls
            to charge: one per distinct request to send (more if some are retried), plus what
            a prepaid response cost.
        """
        keyer = _Keyer(action, action.invocation_parameters())
        peek = self.cache.peek
        outcomes: list[ReplayOutcome | None] = []
        charged: dict[str, int] = {}
        for sample in samples:
            key = keyer(sample.chat_history)
            body = peek(key)
            if body is None:
                charged[key] = 1
                outcomes.append(None)
            else:
                paid = self.prepaid.get(key)
                if paid is not None:
                    charged[key] = paid.calls
                outcomes.append(_ok_outcome(sample.sample_id, body, 0, True))
        return ReplayPlan(outcomes=outcomes, calls=sum(charged.values()))

    def replay_sync(
        self, samples: Sequence[Sample], action: Action, *, progress: bool = False
    ) -> ReplayReport:
        """Blocking :meth:`replay`; works with or without a running event loop.

        It runs on this replayer's private event-loop thread (the same loop on every call,
        so the client's pooled connections stay valid).
        """
        with self._loop_lock:
            if self._background is None:
                self._background = BackgroundLoop()
            background = self._background
        return background.run(self.replay(samples, action, progress=progress))

    def close(self) -> None:
        """Stop the private loop thread of :meth:`replay_sync` (the client stays open)."""
        with self._loop_lock:
            if self._background is not None:
                self._background.close()
                self._background = None

    async def _fetch_all(
        self,
        samples: list[Sample],
        action: Action,
        params: dict[str, Any],
        pending: dict[str, list[int]],
        outcomes: list[ReplayOutcome | None],
        tally: _Tally,
        errors: list[BaseException],
        progress: bool,
    ) -> int:
        """Send the distinct uncached requests with a bounded worker pool; returns shared hits."""
        bar = _progress_bar(len(samples), len(samples) - sum(map(len, pending.values())), progress)
        kwargs, extra_body = self._split_params(params)
        jobs = iter(pending.items())
        shared_hits = 0

        async def worker() -> None:
            nonlocal shared_hits
            for key, indices in jobs:
                if self._tripped is not None:
                    return
                messages = build_messages(samples[indices[0]], action)
                fetched = await self._fetch(key, action.model, messages, kwargs, extra_body, tally)
                for position, index in enumerate(indices):
                    sample_id = samples[index].sample_id
                    shared = fetched.shared or position > 0
                    if fetched.body is not None:
                        attempts = 0 if shared else fetched.attempts
                        outcomes[index] = _ok_outcome(sample_id, fetched.body, attempts, shared)
                        shared_hits += shared
                    else:
                        assert fetched.error is not None
                        errors.append(fetched.error)
                        outcomes[index] = self._failed_outcome(sample_id, fetched, shared)
                if bar is not None:
                    bar.update(len(indices))

        try:
            workers = min(self.config.concurrency, len(pending))
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            if bar is not None:
                bar.close()
        return shared_hits

    async def _fetch(
        self,
        key: str,
        model: str,
        messages: list[dict[str, Any]],
        kwargs: dict[str, Any],
        extra_body: dict[str, Any] | None,
        tally: _Tally,
    ) -> _Fetched:
        """Return the response for one distinct request: cached, in flight elsewhere, or sent."""
        inflight = self._inflight.get(key)
        if inflight is not None:
            other = await asyncio.shield(inflight)
            return _Fetched(other.body, other.error, 0, shared=True)
        if key in self.cache:
            return _Fetched(self.cache.get(key), None, 0, shared=True)
        future: asyncio.Future[_Fetched] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        attempts = 0
        guard = self.call_guard
        try:
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.config.max_retries + 1),
                wait=Backoff(self.config.backoff_initial_s, self.config.backoff_max_s),
                retry=retry_if_exception(is_retryable),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    if self._tripped is not None:
                        raise self._tripped  # the backend is down: stop retrying
                    if guard is not None and not guard():
                        raise BudgetExhausted(
                            f"Not sent: the call budget is spent ({attempts} attempt(s) made "
                            "for this request)."
                        )
                    attempts += 1
                    tally.calls += 1
                    self.calls_sent += 1
                    try:
                        body = await self._send(model, messages, kwargs, extra_body)
                    except Exception as exc:
                        self.failed_attempts[failure_reason(exc)] += 1
                        raise
            usage = body.get("usage") or {}
            tally.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            tally.completion_tokens += int(usage.get("completion_tokens") or 0)
            tally.retries += attempts - 1
            self.cache.pay(key, body, calls=attempts)
            fetched = _Fetched(body, None, attempts)
            self._monitor.record(True)
        except Exception as exc:
            fetched = _Fetched(None, exc, attempts)
            tally.retries += max(0, attempts - 1)
            if attempts:
                self.cache.record_failure(calls=attempts)
            if not isinstance(exc, BudgetExhausted | BackendUnavailableError):
                self._trip_if_down(exc, model)
        except BaseException:
            del self._inflight[key]
            future.cancel()
            raise
        del self._inflight[key]
        future.set_result(fetched)
        return fetched

    async def _send(
        self,
        model: str,
        messages: list[dict[str, Any]],
        kwargs: dict[str, Any],
        extra_body: dict[str, Any] | None,
    ) -> dict[str, Any]:
        timeout = self.config.timeout_s
        typed_messages: list[dict[str, Any]] = messages
        if self.config.messages_in_extra_body:
            extra_body = {"messages": messages, **(extra_body or {})}
            typed_messages = []
        with self._untraced():
            async with asyncio.timeout(timeout):
                raw = await self._create(
                    model=model,
                    messages=cast(Any, typed_messages),
                    timeout=timeout,
                    extra_body=extra_body,
                    **kwargs,
                )
        return parse_completion(raw.http_response)

    def _trip_if_down(self, exc: BaseException, model: str) -> None:
        """Record a failed request; open the breaker when the backend looks down."""
        why = self._monitor.record(False)
        if why is None or self._tripped is not None:
            return
        where = str(getattr(self.client, "base_url", "the endpoint"))
        last = self._describe(exc)
        self._tripped = BackendUnavailableError(
            f"The backend at {where} is failing for model {model!r}: {why}. Last error: {last}. "
            "Check that the server is running and reachable, the base_url and model are right, "
            "and it answers chat completions.",
            base_url=where,
            model=model,
            last_error=last,
            failures=self._monitor.consecutive,
        )

    def reset_failures(self) -> None:
        """Close the circuit breaker (after the backend was fixed) and forget past failures."""
        self._tripped = None
        self._monitor.reset()

    def _split_params(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Named SDK arguments go as keywords; anything else travels in the JSON body."""
        reserved = {"model", "messages", "timeout", "extra_body", "extra_headers", "extra_query"}
        kwargs = {k: v for k, v in params.items() if k in self._create_params and k not in reserved}
        extra = {k: v for k, v in params.items() if k not in kwargs}
        return kwargs, (extra or None)

    def _failed_outcome(self, sample_id: str, fetched: _Fetched, shared: bool) -> ReplayOutcome:
        exc = fetched.error
        return ReplayOutcome(
            sample_id=sample_id,
            error=self._describe(exc),
            error_type=type(exc).__name__,
            reason=failure_reason(exc),
            attempts=0 if shared else fetched.attempts,
            cached=shared,
        )

    def _describe(self, exc: BaseException | None) -> str:
        """One line naming the error, with the client's API key (if any) redacted."""
        text = f"{type(exc).__name__}: {exc}".strip()
        if isinstance(exc, TimeoutError) and not str(exc):
            text = f"TimeoutError: no response within {self.config.timeout_s} s"
        api_key = getattr(self.client, "api_key", None)
        if isinstance(api_key, str) and len(api_key) >= 8:
            text = text.replace(api_key, "<redacted>")
        return " ".join(text.split())[:500]

    def _raise_if_systemic(
        self, report: ReplayReport, errors: list[BaseException], action: Action
    ) -> None:
        outcomes = report.outcomes
        if not outcomes or any(o.ok for o in outcomes) or len(report.failures_by_type) != 1:
            return
        first = errors[0] if errors else None
        if first is None or is_retryable(first) or isinstance(first, BudgetExhausted):
            return
        status = getattr(first, "status_code", None)
        if isinstance(status, int):
            hint = SYSTEMIC_HINTS.get(status, "the same error hit every request")
        else:
            hint = "the request could not be built: check the action's parameters"
        where = getattr(self.client, "base_url", "the endpoint")
        raise ReplayError(
            f"Every one of the {len(outcomes)} samples failed with {type(first).__name__}"
            f"{f' (HTTP {status})' if status else ''} for model {action.model!r} at {where}: "
            f"{hint}. First error: {self._describe(first)}"
        ) from first


def _progress_bar(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="replay", unit="sample")
