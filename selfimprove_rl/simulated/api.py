"""What does the simulated OpenAI-compatible API answer to one HTTP request? One core.

One core for the in-process transport and the HTTP server, so both serve exactly the same
model, errors and faults:

* ``POST .../chat/completions``: the simulated model's answer (:mod:`.model`);
* ``GET .../models`` and ``GET .../models/{id}``: the tiers, OpenAI-style;
* ``GET .../health``: ``{"status": "ok"}``;
* anything else: an OpenAI-style 404 or 405 error.

Paths match by suffix, so any base URL path (``/v1``, ``/openai/v1``) works. Errors carry an
OpenAI error body (``{"error": {"message", "type", "param", "code"}}``), which the ``openai``
SDK turns into ``BadRequestError``, ``NotFoundError`` and so on. Faults (:mod:`.faults`) apply
to chat completions only.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from selfimprove_rl.errors import SimulatedRequestError
from selfimprove_rl.simulated.faults import (
    FaultInjector,
    FaultKind,
    FaultPlan,
    error_body,
    fault_response,
    reject_response_format_response,
)
from selfimprove_rl.simulated.model import SimulatedChatModel
from selfimprove_rl.simulated.tiers import SIMULATED_MODELS, TierSpec, get_tier

_JSON = {"content-type": "application/json"}


class ApiResponse(NamedTuple):
    """An HTTP answer: status, headers, body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


class Outcome(NamedTuple):
    """What to do with a request: send ``response``, or hold it (``fault == "timeout"``)."""

    response: ApiResponse | None
    fault: FaultKind | None = None


def _json_response(payload: object, status: int = 200) -> ApiResponse:
    return ApiResponse(status, _JSON, json.dumps(payload, ensure_ascii=False).encode())


def _error(error: SimulatedRequestError) -> ApiResponse:
    body = error_body(str(error), error.error_type, error.code, error.param)
    return ApiResponse(error.status, _JSON, body)


def _model_card(spec: TierSpec) -> dict[str, object]:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": "selfimprove-rl"}


class SimulatedApi:
    """Routes HTTP requests to the simulated model, with optional fault injection.

    Args:
        model: the model to serve; default: a new :class:`SimulatedChatModel`.
        faults: latency and faults to inject; default: none.
    """

    def __init__(
        self, model: SimulatedChatModel | None = None, faults: FaultPlan | None = None
    ) -> None:
        self.model = model or SimulatedChatModel()
        self.faults = faults if faults is not None and faults.active else None
        self.injector = FaultInjector(self.faults) if self.faults else None

    @property
    def latency_s(self) -> float:
        """Latency to add before answering, in seconds."""
        return self.faults.latency_ms / 1000.0 if self.faults else 0.0

    def answer(self, method: str, path: str, body: bytes) -> Outcome:
        """Answer one request (faults included; latency is the caller's to wait).

        Args:
            method: the HTTP method.
            path: the URL path.
            body: the raw request body.
        """
        path = path.rstrip("/")
        if path.endswith("/chat/completions"):
            if method != "POST":
                return Outcome(self._not_allowed(method, path))
            return self._chat(body)
        if path.endswith("/models") or path.endswith("/health"):
            if method != "GET":
                return Outcome(self._not_allowed(method, path))
            if path.endswith("/health"):
                return Outcome(_json_response({"status": "ok"}))
            cards = [_model_card(spec) for spec in SIMULATED_MODELS.values()]
            return Outcome(_json_response({"object": "list", "data": cards}))
        head, _, name = path.rpartition("/")
        if head.endswith("/models") and method == "GET":
            try:
                return Outcome(_json_response(_model_card(get_tier(name))))
            except SimulatedRequestError as error:
                return Outcome(_error(error))
        message = (
            f"Unknown path {path!r}; the simulated API serves /v1/chat/completions and /v1/models."
        )
        return Outcome(
            ApiResponse(404, _JSON, error_body(message, "invalid_request_error", "not_found"))
        )

    def _not_allowed(self, method: str, path: str) -> ApiResponse:
        message = f"Method {method} is not allowed on {path!r}."
        return ApiResponse(
            405, _JSON, error_body(message, "invalid_request_error", "method_not_allowed")
        )

    def _chat(self, body: bytes) -> Outcome:
        try:
            request = json.loads(body)
        except ValueError as exc:
            error = SimulatedRequestError(
                f"Expected a JSON request body, got invalid JSON ({exc}).",
                status=400,
                code="invalid_json",
            )
            return Outcome(_error(error))
        if self.faults is not None and self.injector is not None:
            if self.faults.reject_response_format and isinstance(request, dict):
                if request.get("response_format") is not None:
                    return Outcome(ApiResponse(*reject_response_format_response()))
            kind = self.injector.draw()
            if kind == "timeout":
                return Outcome(None, kind)
            if kind is not None:
                return Outcome(ApiResponse(*fault_response(kind, self.faults)), kind)
        try:
            return Outcome(_json_response(self.model.complete(request)))
        except SimulatedRequestError as error:
            return Outcome(_error(error))
