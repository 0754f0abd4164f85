"""How does the ``openai`` SDK reach the simulated model in process? An httpx transport.

:class:`SimulatedTransport` is both an ``httpx.BaseTransport`` and an
``httpx.AsyncBaseTransport``: give it to ``httpx.Client`` or ``httpx.AsyncClient`` and the
real ``openai`` SDK talks to the simulated model without a socket. :func:`make_sync_client`
and :func:`make_async_client` do that wiring, with ``max_retries=0`` (the replay owns
retries) and a placeholder API key.

A fault plan works here as on the HTTP server, with one difference: an in-process
``timeout`` fault waits for the client's read timeout (at most the plan's hold) and then
raises ``httpx.ReadTimeout``, which the SDK reports as ``openai.APITimeoutError``.

Example:
    >>> client = make_sync_client()
    >>> reply = client.chat.completions.create(
    ...     model="sim-keyword",
    ...     messages=[
    ...         {"role": "system", "content": 'if input mentions tea: respond "Tea!"'},
    ...         {"role": "user", "content": "tea?"},
    ...     ],
    ... )
    >>> reply.choices[0].message.content, reply.usage.prompt_tokens
    ('Tea!', 21)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai

from selfimprove_rl.simulated.api import ApiResponse, SimulatedApi
from selfimprove_rl.simulated.faults import FaultPlan
from selfimprove_rl.simulated.model import SimulatedChatModel

IN_PROCESS_BASE_URL = "http://simulated.invalid/v1"
PLACEHOLDER_API_KEY = "sk-simulated-no-key-needed"


class SimulatedTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An httpx transport (sync and async) answered by the simulated model.

    Args:
        model: the model to serve; default: a new :class:`SimulatedChatModel`.
        faults: latency and faults to inject; default: none.
    """

    def __init__(
        self, model: SimulatedChatModel | None = None, faults: FaultPlan | None = None
    ) -> None:
        self.api = SimulatedApi(model, faults)

    def _hold_s(self, request: httpx.Request) -> float:
        hold = self.api.faults.timeout_hold_s if self.api.faults else 0.0
        read = (request.extensions.get("timeout") or {}).get("read")
        return hold if read is None else min(float(read), hold)

    @staticmethod
    def _response(answer: ApiResponse, request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            answer.status, headers=answer.headers, content=answer.body, request=request
        )

    def _timeout(self, request: httpx.Request) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(
            "Injected timeout fault of the simulated model: no answer before the read timeout.",
            request=request,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer a request from a sync ``httpx.Client``."""
        body = request.read()
        if self.api.latency_s:
            time.sleep(self.api.latency_s)
        outcome = self.api.answer(request.method, request.url.path, body)
        if outcome.response is None:
            time.sleep(self._hold_s(request))
            raise self._timeout(request)
        return self._response(outcome.response, request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer a request from an ``httpx.AsyncClient``."""
        body = await request.aread()
        if self.api.latency_s:
            await asyncio.sleep(self.api.latency_s)
        outcome = self.api.answer(request.method, request.url.path, body)
        if outcome.response is None:
            await asyncio.sleep(self._hold_s(request))
            raise self._timeout(request)
        return self._response(outcome.response, request)


def _client_kwargs(
    http_client: httpx.Client | httpx.AsyncClient, timeout_s: float
) -> dict[str, Any]:
    # openai >= 3 types http_client as httpx2 clients but accepts httpx ones (its legacy path).
    return {
        "api_key": PLACEHOLDER_API_KEY,
        "base_url": IN_PROCESS_BASE_URL,
        "http_client": http_client,
        "max_retries": 0,
        "timeout": timeout_s,
    }


def make_sync_client(
    transport: SimulatedTransport | None = None,
    *,
    faults: FaultPlan | None = None,
    timeout_s: float = 60.0,
) -> openai.OpenAI:
    """Return an ``openai.OpenAI`` client answered in process by the simulated model.

    Args:
        transport: the transport to use (share one to share its fault stream); default: new.
        faults: latency and faults for a new transport (ignored when ``transport`` is given).
        timeout_s: the client timeout.
    """
    transport = transport or SimulatedTransport(faults=faults)
    return openai.OpenAI(
        **_client_kwargs(httpx.Client(transport=transport, timeout=timeout_s), timeout_s)
    )


def make_async_client(
    transport: SimulatedTransport | None = None,
    *,
    faults: FaultPlan | None = None,
    timeout_s: float = 60.0,
) -> openai.AsyncOpenAI:
    """Return an ``openai.AsyncOpenAI`` client answered in process by the simulated model.

    Args:
        transport: the transport to use (share one to share its fault stream); default: new.
        faults: latency and faults for a new transport (ignored when ``transport`` is given).
        timeout_s: the client timeout.
    """
    transport = transport or SimulatedTransport(faults=faults)
    return openai.AsyncOpenAI(
        **_client_kwargs(httpx.AsyncClient(transport=transport, timeout=timeout_s), timeout_s)
    )
