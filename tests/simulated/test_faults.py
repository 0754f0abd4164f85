"""Fault injection in process: every kind, the seeded stream, latency that overlaps."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest
from pydantic import ValidationError

from selfimprove_rl.simulated import FaultInjector, FaultPlan, make_async_client, make_sync_client
from selfimprove_rl.simulated.faults import FAULT_KINDS, FaultKind

MESSAGES = [
    {"role": "system", "content": 'if input mentions tea: respond "Tea!"'},
    {"role": "user", "content": "tea"},
]


def only(kind: FaultKind, **extra: float) -> FaultPlan:
    return FaultPlan(fail_rate=1.0, kinds=(kind,), **extra)  # type: ignore[arg-type]


def test_rate_limit_is_a_429_with_retry_after() -> None:
    client = make_sync_client(faults=only("rate_limit", retry_after_s=2.5))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="sim-large", messages=MESSAGES)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.headers["retry-after-ms"] == "2500"
    assert caught.value.code == "rate_limit_exceeded"


def test_server_error_is_a_500() -> None:
    client = make_sync_client(faults=only("server_error"))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="sim-large", messages=MESSAGES)
    assert caught.value.status_code == 500


def test_malformed_body_is_invalid_json_with_status_200() -> None:
    client = make_sync_client(faults=only("malformed"))
    raw = client.chat.completions.with_raw_response.create(model="sim-large", messages=MESSAGES)
    assert raw.http_response.status_code == 200
    with pytest.raises(json.JSONDecodeError):  # what the openai SDK raises for such a body
        raw.parse()


def test_timeout_waits_for_the_client_read_timeout() -> None:
    client = make_sync_client(faults=only("timeout", timeout_hold_s=5.0), timeout_s=0.2)
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="sim-large", messages=MESSAGES)
    assert 0.15 < time.perf_counter() - started < 2.0


def test_async_timeout_is_bounded_by_the_hold() -> None:
    async def main() -> None:
        client = make_async_client(faults=only("timeout", timeout_hold_s=0.1), timeout_s=30)
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="sim-large", messages=MESSAGES)

    started = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - started < 2.0


def test_fault_stream_is_seeded_and_rate_is_respected() -> None:
    plan = FaultPlan(fail_rate=0.3, seed=7)
    injector, again = FaultInjector(plan), FaultInjector(plan)
    draws = [injector.draw() for _ in range(1000)]
    assert draws == [again.draw() for _ in range(1000)]
    assert 0.25 < sum(d is not None for d in draws) / 1000 < 0.35
    assert {d for d in draws if d is not None} == set(FAULT_KINDS)
    other = FaultInjector(plan.model_copy(update={"seed": 8}))
    assert [other.draw() for _ in range(1000)] != draws
    assert sum(injector.counts.values()) == sum(d is not None for d in draws)


def test_failed_requests_succeed_on_retry_with_the_same_client() -> None:
    client = make_sync_client(faults=FaultPlan(fail_rate=0.5, seed=3, kinds=("server_error",)))
    outcomes = []
    for _ in range(40):
        try:
            reply = client.chat.completions.create(model="sim-large", messages=MESSAGES)
            outcomes.append(reply.choices[0].message.content)
        except openai.InternalServerError:
            outcomes.append("fault")
    assert 10 < outcomes.count("fault") < 30
    assert set(outcomes) == {"fault", "Tea!"}


def test_latency_overlaps_across_concurrent_requests() -> None:
    async def main() -> float:
        client = make_async_client(faults=FaultPlan(latency_ms=200))
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model="sim-large", messages=MESSAGES)
                for _ in range(40)
            )
        )
        assert all(r.choices[0].message.content == "Tea!" for r in replies)
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    assert 0.2 <= elapsed < 4.0  # 40 requests x 200 ms overlap: in series they take 8 s


def test_plans_validate_their_fields() -> None:
    with pytest.raises(ValidationError):
        FaultPlan(fail_rate=1.5)
    with pytest.raises(ValidationError):
        FaultPlan(kinds=("meteor",))  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        FaultPlan(kinds=())
    assert not FaultPlan().active and FaultPlan(latency_ms=1).active
