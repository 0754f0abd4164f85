"""What goes wrong, and when? Seeded fault injection for the simulated backends.

A :class:`FaultPlan` configures the in-process transport and the HTTP server alike:

* ``latency_ms`` is added to every request (``asyncio.sleep`` on async paths, so concurrent
  requests overlap as they would against a real server);
* with probability ``fail_rate`` a request gets one of ``kinds``:

  ``rate_limit``
      HTTP 429 with ``Retry-After`` (seconds) and ``retry-after-ms`` headers;
  ``server_error``
      HTTP 500 with an OpenAI-style error body;
  ``timeout``
      the request is held for ``timeout_hold_s`` (the HTTP server) or until the client's
      read timeout, after which the in-process transport raises ``httpx.ReadTimeout``;
  ``malformed``
      HTTP 200 whose body is truncated, invalid JSON;

* ``reject_response_format`` answers every request that carries ``response_format`` with
  HTTP 400, the signal that makes Phoenix evals fall back to forced tool calling.

The draws come from one RNG stream seeded by ``seed``: the n-th request received consumes the
n-th pair of draws, whatever happened before, so a retry of a failed request draws afresh.

Example:
    >>> injector = FaultInjector(FaultPlan(fail_rate=0.5, seed=1))
    >>> [injector.draw() for _ in range(4)]
    ['malformed', None, 'server_error', None]
"""

from __future__ import annotations

import json
import math
import random
import threading
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal["rate_limit", "server_error", "timeout", "malformed"]
FAULT_KINDS: tuple[FaultKind, ...] = ("rate_limit", "server_error", "timeout", "malformed")
MALFORMED_BODY = b'{"id": "chatcmpl-sim-malformed", "object": "chat.completion", "choices": [{'


class FaultPlan(BaseModel):
    """Latency and seeded faults for a simulated backend."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0.0, description="Added latency per request.")
    fail_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of requests answered with a fault."
    )
    seed: int = Field(default=0, description="Seed of the fault RNG stream.")
    kinds: tuple[FaultKind, ...] = Field(
        default=FAULT_KINDS, min_length=1, description="Fault kinds drawn uniformly."
    )
    retry_after_s: float = Field(default=1.0, ge=0.0, description="Retry-After of a 429.")
    timeout_hold_s: float = Field(
        default=30.0, gt=0.0, description="How long a 'timeout' fault holds the request."
    )
    reject_response_format: bool = Field(
        default=False, description="Answer requests carrying response_format with HTTP 400."
    )

    @property
    def active(self) -> bool:
        """Whether the plan changes anything at all."""
        return self.latency_ms > 0 or self.fail_rate > 0 or self.reject_response_format


class FaultInjector:
    """Draws the fault of each request from the plan's seeded stream (thread-safe)."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {kind: 0 for kind in plan.kinds}

    def draw(self) -> FaultKind | None:
        """Return the fault of the next request, or ``None`` for a normal answer."""
        with self._lock:
            failing, which = self._rng.random(), self._rng.random()
            if failing >= self.plan.fail_rate:
                return None
            kind = self.plan.kinds[min(int(which * len(self.plan.kinds)), len(self.plan.kinds) - 1)]
            self.counts[kind] += 1
            return kind


def error_body(message: str, error_type: str, code: str, param: str | None = None) -> bytes:
    """Return an OpenAI-style error body.

    Example:
        >>> error_body("Slow down.", "requests", "rate_limit_exceeded")
        b'{"error": {"message": "Slow down.", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}'
    """  # noqa: E501
    payload = {"message": message, "type": error_type, "param": param, "code": code}
    return json.dumps({"error": payload}).encode()


def fault_response(kind: FaultKind, plan: FaultPlan) -> tuple[int, dict[str, str], bytes]:
    """Return the status, headers and body of a fault that has a response of its own.

    Raises:
        ValueError: for ``timeout``, which has no response of its own.
    """
    json_type = {"content-type": "application/json"}
    if kind == "rate_limit":
        headers = {
            **json_type,
            "retry-after": str(max(0, math.ceil(plan.retry_after_s))),
            "retry-after-ms": str(round(plan.retry_after_s * 1000)),
        }
        body = error_body(
            "Rate limit reached (injected fault of the simulated model).",
            "requests",
            "rate_limit_exceeded",
        )
        return 429, headers, body
    if kind == "server_error":
        body = error_body(
            "The server had an error (injected fault of the simulated model).",
            "server_error",
            "server_error",
        )
        return 500, json_type, body
    if kind == "malformed":
        return 200, json_type, MALFORMED_BODY
    raise ValueError(f"Expected a fault with a response of its own, got {kind!r}.")


def reject_response_format_response() -> tuple[int, dict[str, str], bytes]:
    """The HTTP 400 a plan with ``reject_response_format`` sends."""
    body = error_body(
        "response_format is not supported by this model (simulated rejection); use tool calling.",
        "invalid_request_error",
        "unsupported_parameter",
        "response_format",
    )
    return 400, {"content-type": "application/json"}, body
