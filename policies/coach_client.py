"""How does the coach talk to its model? Structured output negotiated once, failures counted.

:class:`CoachClient` sends a coach's chat requests to any OpenAI-compatible server:

* **Structured output, negotiated once.** With ``response_format="auto"`` it asks for
  ``json_schema`` first, then ``json_object``, then plain text, and keeps the first mode the
  server accepts (``state_dict`` carries it across ``--resume``). A server refuses a mode
  with any 4xx/5xx whose body names ``response_format``: OpenAI and vLLM answer 400;
  llama.cpp's server answers json_schema with HTTP 500 and a validation error naming
  ``response_format``. Other errors are failures, not refusals.
* **Systemic failures stop the run.** ``max_consecutive_failures`` failed requests in a row
  (connection refused, timeouts, HTTP errors) raise :class:`CoachUnavailableError`: a coach
  that cannot be reached must not turn a run into silent no-ops. Retryable failures
  (connection, timeout, 408/409/429, 5xx) wait ``backoff_s`` first, doubling up to 8 s.

The API key is read from the environment when the client is made and never kept; error
messages are cut to 200 characters with keys (even masked ones) redacted.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Literal

from policies.coach_reply import REPLY_SCHEMA
from selfimprove_rl.backend import Backend
from selfimprove_rl.errors import CoachUnavailableError

ResponseFormat = Literal["auto", "json_schema", "json_object", "text"]
FORMAT_ORDER: tuple[ResponseFormat, ...] = ("json_schema", "json_object", "text")
_KEY_PATTERN = re.compile(r"\b(?:sk|key)-[A-Za-z0-9*_\-]{6,}")
_RETRYABLE_STATUS = frozenset({408, 409, 429})
_MAX_BACKOFF_S = 8.0


class CoachClient:
    """Chat requests of one coach: negotiated structured output, counted failures.

    Args:
        model: the coach model name, as the server knows it.
        backend: the server (a ``local_llm`` backend reaches the server this process runs).
        client: an ``openai.OpenAI`` client to use instead of one made from ``backend``.
        temperature: sampling temperature.
        max_tokens: reply token limit (``None``: not sent).
        seed: sampling seed sent with each request (``None``: not sent).
        response_format: ``auto`` negotiates; a fixed mode is used as it is.
        max_consecutive_failures: failed requests in a row that raise
            :class:`CoachUnavailableError`.
        backoff_s: first wait after a retryable failure.
    """

    def __init__(
        self,
        model: str,
        backend: Backend,
        *,
        client: Any = None,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        seed: int | None = None,
        response_format: ResponseFormat = "auto",
        max_consecutive_failures: int = 5,
        backoff_s: float = 0.5,
    ) -> None:
        self.model = model
        self.backend = backend
        self._client = client
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.max_consecutive_failures = max_consecutive_failures
        self.backoff_s = backoff_s
        self.format: ResponseFormat | None = None if response_format == "auto" else response_format
        self.refusals: list[dict[str, Any]] = []
        self.requests = 0
        self.request_failures = 0
        self.consecutive_failures = 0

    @property
    def client(self) -> Any:
        """The OpenAI client (made on first use; the key is read from the environment then).

        A ``local_llm`` backend without ``base_url`` reaches the local model server this
        process runs (a run starts it; see :meth:`Backend.serving`).
        """
        if self._client is None:
            self._client = self.backend.resolved().sync_client()
        return self._client

    def complete(self, messages: list[dict[str, str]]) -> str | None:
        """Send one chat request (negotiating the mode on first use); return the reply text.

        Raises:
            openai.APIError: the request failed (counted; the caller may try again).
            CoachUnavailableError: ``max_consecutive_failures`` failures in a row.
        """
        import openai

        try:
            content = self._negotiated(messages)
        except openai.APIError as exc:
            self.request_failures += 1
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.max_consecutive_failures:
                raise CoachUnavailableError(
                    f"The coach model {self.model!r} on {self.backend.describe()} failed "
                    f"{self.consecutive_failures} requests in a row (last: {type(exc).__name__}: "
                    f"{' '.join(self.redact(str(exc)).split())}). Check that the server is up "
                    "and reachable at its base_url, the model name and the API key; "
                    "max_consecutive_failures sets how many failures stop the run."
                ) from exc
            if _retryable(exc) and self.backoff_s > 0:
                exponent = self.consecutive_failures - 1
                time.sleep(min(_MAX_BACKOFF_S, self.backoff_s * 2**exponent))
            raise
        self.consecutive_failures = 0
        return content

    def _negotiated(self, messages: list[dict[str, str]]) -> str | None:
        """Send one request, stepping down the structured-output modes the server refuses."""
        import openai

        while True:
            mode = self._next_mode()
            kwargs: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                **_format_kwargs(mode),
            }
            if self.max_tokens is not None:
                kwargs["max_tokens"] = self.max_tokens
            if self.seed is not None:
                kwargs["seed"] = self.seed
            self.requests += 1
            try:
                response = self.client.chat.completions.create(**kwargs)
            except openai.APIStatusError as exc:
                if self.format is None and mode != "text" and _refuses_format(exc):
                    self.refusals.append(
                        {"mode": mode, "status": exc.status_code, "error": self.redact(str(exc))}
                    )
                    continue
                raise
            self.format = mode
            choices = getattr(response, "choices", None) or []
            return choices[0].message.content if choices else None

    def _next_mode(self) -> ResponseFormat:
        """The negotiated mode, or the first one the server has not refused yet."""
        if self.format is not None:
            return self.format
        refused = {r["mode"] for r in self.refusals}
        return next(m for m in FORMAT_ORDER if m not in refused)

    def redact(self, text: str) -> str:
        """Cut an error message to 200 characters with any API key (even masked) removed."""
        secret = os.environ.get(self.backend.api_key_env)
        if secret:
            text = text.replace(secret, "[redacted]")
        return _KEY_PATTERN.sub("[redacted]", text)[:200]

    def report(self) -> dict[str, Any]:
        """Return the negotiated mode, the refused modes, requests and failed requests."""
        return {
            "format": self.format,
            "refused_formats": [r["mode"] for r in self.refusals],
            "requests": self.requests,
            "request_failures": self.request_failures,
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the negotiation (mode, refusals) and the counters, JSON-serialisable."""
        return {
            "format": self.format,
            "refusals": [dict(r) for r in self.refusals],
            "requests": self.requests,
            "request_failures": self.request_failures,
            "consecutive_failures": self.consecutive_failures,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.format = state.get("format")
        self.refusals = [dict(r) for r in state.get("refusals", [])]
        self.requests = int(state.get("requests", 0))
        self.request_failures = int(state.get("request_failures", 0))
        self.consecutive_failures = int(state.get("consecutive_failures", 0))


def _format_kwargs(mode: ResponseFormat) -> dict[str, Any]:
    if mode == "json_schema":
        schema = {"name": "coach_edit", "schema": REPLY_SCHEMA, "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    if mode == "json_object":
        return {"response_format": {"type": "json_object"}}
    return {}


def _refuses_format(exc: Any) -> bool:
    """Whether an HTTP error says the server does not take the requested ``response_format``."""
    status = int(getattr(exc, "status_code", 0) or 0)
    body = getattr(exc, "body", None)
    text = f"{getattr(exc, 'message', '')} {json.dumps(body, default=str) if body else ''}"
    return status >= 400 and "response_format" in text


def _retryable(exc: Any) -> bool:
    """Whether a failed request may succeed later (connection, timeout, 408/409/429, 5xx)."""
    status = getattr(exc, "status_code", None)
    return status is None or int(status) in _RETRYABLE_STATUS or int(status) >= 500
