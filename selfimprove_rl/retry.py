"""Is a failed request worth retrying, how long to wait, and when is the backend down?

The replay's view of failure, in one place:

* :func:`is_retryable`: transient faults (timeouts, connection errors, malformed bodies,
  HTTP 408/409/429/5xx) against wrong requests (400, 401, 403, 404, 422, bugs);
* :func:`failure_reason`: the short name a failure is counted under in run summaries
  (``http_429``, ``timeout``, ``malformed``, ``connection``, ``budget``...);
* :class:`Backoff`: exponential backoff with jitter, stretched to a server's ``Retry-After``;
* :func:`parse_completion`: a response body is a chat completion, or a
  :class:`MalformedResponseError` (retried);
* :class:`FailureMonitor`: the circuit breaker's memory. It sees the final outcome of every
  distinct request (after its retries) and says when failures are systemic: too many in a
  row, or too large a share of a recent window. A sample failing now and then never trips
  it; a closed port or a server answering 500 to everything does, within one wave of
  requests.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any, Protocol

import httpx
from tenacity import RetryCallState, wait_exponential_jitter

from selfimprove_rl.errors import BudgetExhausted, SelfImproveError

_RETRYABLE_STATUS = frozenset({408, 409, 429})
SYSTEMIC_HINTS = {
    400: "the endpoint rejects the request itself: check the action's model and parameters "
    "(temperature, max_tokens, extra_parameters) against what the endpoint accepts",
    401: "the endpoint rejects the credentials: check the client's API key (OPENAI_API_KEY) "
    "and that its base_url is the endpoint the key belongs to",
    403: "the credentials may not use this model or endpoint: check the key's permissions",
    404: "the endpoint does not know this model or path: check Action.model and that the "
    "client's base_url ends where the API is served (often .../v1)",
    422: "the endpoint cannot process the request: check the action's parameters",
}


class _ResponseLike(Protocol):
    """The part of an ``httpx`` / ``httpx2`` response that replay reads."""

    @property
    def headers(self) -> Any: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class MalformedResponseError(SelfImproveError):
    """A response arrived but is not a usable chat completion (retried, then recorded)."""


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed request is worth retrying (a transient fault, not a wrong request).

    Retryable: timeouts, connection errors, malformed or unparseable bodies, and HTTP 408,
    409, 429 and 5xx. Not retryable: every other status (400, 401, 403, 404, 422...) and any
    other exception (a bug, a wrong argument).
    """
    import openai

    if isinstance(exc, TimeoutError | MalformedResponseError | httpx.TransportError):
        return True
    httpx2 = sys.modules.get("httpx2")  # the transport layer of openai >= 3, when loaded
    if httpx2 is not None and isinstance(exc, httpx2.TransportError):
        return True
    if isinstance(exc, openai.APIConnectionError | openai.APIResponseValidationError):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRYABLE_STATUS or exc.status_code >= 500
    return False


def failure_reason(exc: BaseException | None) -> str:
    """Name why a request failed, in the words counted per reason in run summaries.

    Example:
        >>> failure_reason(TimeoutError()), failure_reason(MalformedResponseError("x"))
        ('timeout', 'malformed')
    """
    import openai

    if isinstance(exc, BudgetExhausted):
        return "budget"
    if isinstance(exc, TimeoutError | openai.APITimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, MalformedResponseError | openai.APIResponseValidationError):
        return "malformed"
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
        return "connection"
    return type(exc).__name__ if exc is not None else "unknown"


def retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds the server asked to wait before retrying (``Retry-After``), when it said so."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


class Backoff:
    """Exponential backoff with jitter, stretched to a server's Retry-After (capped)."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self._jittered = wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s)
        self._max_s = max_s

    def __call__(self, state: RetryCallState) -> float:
        """Seconds to wait before the next attempt."""
        wait = float(self._jittered(state))
        exc = state.outcome.exception() if state.outcome is not None else None
        hinted = retry_after_s(exc)
        if hinted is not None:
            wait = max(wait, min(hinted, self._max_s))
        return wait


def parse_completion(response: _ResponseLike) -> dict[str, Any]:
    """Return the JSON body of a chat completion, checking it has ``choices[0].message``.

    Args:
        response: the HTTP response (``httpx`` or ``httpx2``, whichever the client uses).

    Raises:
        MalformedResponseError: the body is not JSON or not a chat completion.
    """
    try:
        body = response.json()
    except ValueError as exc:
        raise MalformedResponseError(
            "Expects a JSON chat completion, got an unparseable "
            f"{response.headers.get('content-type', 'untyped')} body: {response.text[:80]!r}"
        ) from exc
    choices = body.get("choices") if isinstance(body, dict) else None
    if (
        not isinstance(choices, list)
        or not choices
        or not isinstance(choices[0], dict)
        or not isinstance(choices[0].get("message"), dict)
    ):
        raise MalformedResponseError(
            f"Expects a chat completion with choices[0].message, got {str(body)[:120]!r}"
        )
    return body


class FailureMonitor:
    """Remembers the final outcomes of distinct requests; says when the backend looks down.

    Args:
        max_consecutive: failures in a row that open the breaker (``None``: no such rule).
        window: how many recent outcomes the rate rule looks at.
        max_rate: a share of failures in a full window above which the breaker opens
            (``None``: no such rule).

    Example:
        >>> monitor = FailureMonitor(max_consecutive=3, window=10, max_rate=None)
        >>> [monitor.record(ok) for ok in (False, False, True, False, False)]
        [None, None, None, None, None]
        >>> monitor.record(False)
        '3 requests in a row failed (max_consecutive_failures=3)'
    """

    def __init__(self, *, max_consecutive: int | None, window: int, max_rate: float | None):
        self._max_consecutive = max_consecutive
        self._window = window
        self._max_rate = max_rate
        self._recent: deque[bool] = deque(maxlen=window)
        self.consecutive = 0

    def record(self, ok: bool) -> str | None:
        """Record one request's final outcome; returns why the breaker opens, if it does."""
        self._recent.append(ok)
        self.consecutive = 0 if ok else self.consecutive + 1
        limit = self._max_consecutive
        if limit is not None and self.consecutive >= limit:
            return f"{self.consecutive} requests in a row failed (max_consecutive_failures={limit})"
        rate = self._max_rate
        if rate is not None and len(self._recent) == self._window:
            failed = self._recent.count(False)
            if failed > rate * self._window:
                return (
                    f"{failed} of the last {self._window} requests failed (max_failure_rate={rate})"
                )
        return None

    def reset(self) -> None:
        """Forget every outcome."""
        self._recent.clear()
        self.consecutive = 0
