"""The simulated model costs little next to the openai SDK's own per-call overhead."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import httpx
import openai

from selfimprove_rl.simulated.api import SimulatedApi
from selfimprove_rl.simulated.transport import make_sync_client

SOP = "\n".join(
    [f'if input mentions word{i} or "thing {i}": respond "Reply {i}."' for i in range(10)]
    + ['else: respond "Tell me more."']
)
MESSAGES = [
    {"role": "system", "content": SOP},
    {"role": "user", "content": "I like coffee in the morning, with word9."},
]
CONSTANT = json.dumps(
    {
        "id": "chatcmpl-constant",
        "object": "chat.completion",
        "created": 0,
        "model": "sim-large",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Reply 9."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


class ConstantTransport(httpx.BaseTransport):
    """Answers every request with the same body: the SDK's cost without any model."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(200, headers={"content-type": "application/json"}, content=CONSTANT)


def per_call_us(call: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def test_model_core_answers_a_keyword_request_in_well_under_a_millisecond() -> None:
    api = SimulatedApi()
    body = json.dumps({"model": "sim-large", "messages": MESSAGES, "temperature": 0}).encode()
    assert json.loads(api.answer("POST", "/v1/chat/completions", body).response.body)  # type: ignore[union-attr]
    rounds = [
        per_call_us(lambda: api.answer("POST", "/v1/chat/completions", body), 500) for _ in range(5)
    ]
    assert statistics.median(rounds) < 300, rounds


def test_sdk_through_the_simulated_transport_keeps_most_of_the_sdk_throughput() -> None:
    simulated = make_sync_client()
    constant = openai.OpenAI(
        api_key="unused",
        base_url="http://constant.invalid/v1",
        http_client=httpx.Client(transport=ConstantTransport()),  # type: ignore[arg-type]
        max_retries=0,
    )

    def create(client: openai.OpenAI) -> Callable[[], object]:
        return lambda: client.chat.completions.create(
            model="sim-large", messages=MESSAGES, temperature=0
        )

    times: dict[str, list[float]] = {"simulated": [], "constant": []}
    for _ in range(5):  # interleaved rounds, best of each: robust to a busy machine
        times["constant"].append(per_call_us(create(constant), 150))
        times["simulated"].append(per_call_us(create(simulated), 150))
    ratio = min(times["constant"]) / min(times["simulated"])
    assert ratio > 0.7, times
