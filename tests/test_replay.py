"""Replay through the real openai SDK against scripted HTTP transports (no SDK mocks)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai
import pytest

from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Action, Sample
from selfimprove_rl.errors import BackendUnavailableError, ReplayError
from selfimprove_rl.replay import (
    ReplayConfig,
    Replayer,
    ReplayUsage,
    _Keyer,
    build_messages,
    request_key,
)

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]
FAST = {"backoff_initial_s": 0.001, "backoff_max_s": 0.01}
SECRET = "sk-test-0123456789abcdef"


def completion(text: str, prompt_tokens: int = 7, completion_tokens: int = 3) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class Scripted:
    """An OpenAI-compatible endpoint in process: echoes the last user message, counts requests."""

    def __init__(self, fault: Callable[[dict[str, Any], int], httpx.Response | None] | None = None):
        self.fault = fault
        self.requests: list[dict[str, Any]] = []
        self.attempts_by_input: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        user = body["messages"][-1]["content"]
        self.attempts_by_input[user] += 1
        if self.fault is not None:
            faulty = self.fault(body, self.attempts_by_input[user])
            if faulty is not None:
                return faulty
        return httpx.Response(200, json=completion(f"echo: {user}"))

    @property
    def calls(self) -> int:
        return len(self.requests)


def make_client(handler: Handler, api_key: str = "sim") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url="http://scripted.test/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )


def make_samples(n: int, prefix: str = "hello") -> list[Sample]:
    return [
        Sample(
            sample_id=f"s{i}",
            chat_history=[{"role": "user", "content": f"{prefix} {i}"}],
            output_generation={"role": "assistant", "content": "logged"},
        )
        for i in range(n)
    ]


ACTION = Action(system_prompt="Be helpful.", model="scripted-model", temperature=0.0)


def test_outcomes_follow_sample_order_and_count_usage() -> None:
    endpoint = Scripted()
    replayer = Replayer(make_client(endpoint))
    samples = make_samples(12)
    report = replayer.replay_sync(samples, ACTION)
    assert [o.sample_id for o in report.outcomes] == [s.sample_id for s in samples]
    assert report.texts == [f"echo: hello {i}" for i in range(12)]
    assert all(o.ok and o.attempts == 1 and not o.cached for o in report.outcomes)
    assert report.usage == ReplayUsage(calls=12, prompt_tokens=84, completion_tokens=36)
    assert report.failures_by_type == {}
    assert endpoint.requests[0]["messages"][0] == {"role": "system", "content": "Be helpful."}
    assert endpoint.requests[0]["temperature"] == 0.0
    assert endpoint.requests[0]["model"] == "scripted-model"


def test_an_empty_replay_is_empty() -> None:
    endpoint = Scripted()
    report = Replayer(make_client(endpoint)).replay_sync([], ACTION)
    assert report.outcomes == [] and report.usage == ReplayUsage() and endpoint.calls == 0


def test_second_identical_replay_makes_no_calls() -> None:
    endpoint = Scripted()
    replayer = Replayer(make_client(endpoint))
    samples = make_samples(10)
    first = replayer.replay_sync(samples, ACTION)
    second = replayer.replay_sync(samples, ACTION)
    assert endpoint.calls == 10
    assert second.usage == ReplayUsage(calls=0, cache_hits=10)
    assert second.texts == first.texts
    assert all(o.cached and o.attempts == 0 for o in second.outcomes)
    assert second.outcomes[0].prompt_tokens == 7  # what the call costs, though not paid again
    assert replayer.usage == first.usage + second.usage


def test_a_changed_prompt_or_parameter_is_a_new_request() -> None:
    endpoint = Scripted()
    replayer = Replayer(make_client(endpoint))
    samples = make_samples(3)
    replayer.replay_sync(samples, ACTION)
    replayer.replay_sync(samples, ACTION.model_copy(update={"system_prompt": "Be brief."}))
    replayer.replay_sync(samples, ACTION.model_copy(update={"temperature": 0.7}))
    replayer.replay_sync(samples, ACTION.model_copy(update={"model": "other-model"}))
    assert endpoint.calls == 12


def test_disk_cache_serves_a_new_replayer_and_client(tmp_path: Any) -> None:
    samples = make_samples(8)
    first_endpoint = Scripted()
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        Replayer(make_client(first_endpoint), cache=cache).replay_sync(samples, ACTION)
    second_endpoint = Scripted()
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        report = Replayer(make_client(second_endpoint), cache=cache).replay_sync(samples, ACTION)
    assert first_endpoint.calls == 8
    assert second_endpoint.calls == 0
    assert report.usage.calls == 0 and report.usage.cache_hits == 8
    assert report.texts == [f"echo: hello {i}" for i in range(8)]


def test_identical_requests_in_one_replay_are_sent_once() -> None:
    endpoint = Scripted()
    samples = [
        Sample(
            sample_id=f"dup{i}",
            chat_history=[{"role": "user", "content": "same words"}],
            output_generation={"role": "assistant", "content": "x"},
        )
        for i in range(5)
    ]
    report = Replayer(make_client(endpoint)).replay_sync(samples, ACTION)
    assert endpoint.calls == 1
    assert [o.cached for o in report.outcomes] == [False, True, True, True, True]
    assert report.usage.calls == 1 and report.usage.cache_hits == 4
    assert {o.text for o in report.outcomes} == {"echo: same words"}


def test_concurrent_replays_share_requests_in_flight() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return endpoint(request)

    endpoint = Scripted()
    replayer = Replayer(make_client(slow))
    samples = make_samples(6)

    async def both() -> list[Any]:
        return await asyncio.gather(
            replayer.replay(samples, ACTION), replayer.replay(samples, ACTION)
        )

    first, second = asyncio.run(both())
    assert endpoint.calls == 6
    assert first.texts == second.texts
    assert first.usage.calls + second.usage.calls == 6
    assert first.usage.cache_hits + second.usage.cache_hits == 6


def test_concurrency_bound_is_respected() -> None:
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return endpoint(request)

    endpoint = Scripted()
    config = ReplayConfig(concurrency=4)
    Replayer(make_client(handler), config=config).replay_sync(make_samples(40), ACTION)
    assert endpoint.calls == 40
    assert peak == 4


def test_transient_faults_are_retried_until_success() -> None:
    kinds: list[Callable[[], httpx.Response]] = [
        lambda: httpx.Response(500, json={"error": {"message": "boom"}}),
        lambda: httpx.Response(429, json={"error": {}}, headers={"retry-after": "0"}),
        lambda: httpx.Response(200, content=b"{not json", headers={"content-type": "text/json"}),
        lambda: httpx.Response(200, json={"object": "chat.completion", "choices": []}),
        lambda: httpx.Response(503, text="<html>unavailable</html>"),
        lambda: httpx.Response(200, text="<html>proxy page</html>"),
    ]

    def fault(body: dict[str, Any], attempt: int) -> httpx.Response | None:
        index = int(body["messages"][-1]["content"].split()[-1])
        return kinds[index % len(kinds)]() if attempt <= 2 else None

    endpoint = Scripted(fault)
    config = ReplayConfig(max_retries=3, **FAST)
    report = Replayer(make_client(endpoint), config=config).replay_sync(make_samples(12), ACTION)
    assert all(o.ok for o in report.outcomes), report.failed
    assert [o.attempts for o in report.outcomes] == [3] * 12
    assert report.usage.calls == 36 == endpoint.calls
    assert report.usage.failures == 0


def test_injected_failures_are_recorded_and_counted_never_raised() -> None:
    def fault(body: dict[str, Any], attempt: int) -> httpx.Response | None:
        user = body["messages"][-1]["content"]
        if user.startswith("broken"):
            return httpx.Response(500, json={"error": {"message": "server fell over"}})
        if user.startswith("rejected"):
            return httpx.Response(400, json={"error": {"message": "context too long"}})
        return None

    samples = make_samples(6) + make_samples(3, "broken") + make_samples(2, "rejected")
    samples = [s.model_copy(update={"sample_id": f"x{i}"}) for i, s in enumerate(samples)]
    endpoint = Scripted(fault)
    config = ReplayConfig(max_retries=2, **FAST)
    report = Replayer(make_client(endpoint), config=config).replay_sync(samples, ACTION)
    assert [o.ok for o in report.outcomes] == [True] * 6 + [False] * 5
    assert report.failures_by_type == {"InternalServerError": 3, "BadRequestError": 2}
    assert report.usage.failures == 5
    broken, rejected = report.outcomes[6], report.outcomes[9]
    assert broken.attempts == 3 and "server fell over" in (broken.error or "")
    assert broken.error_type == "InternalServerError" and broken.text == ""
    assert rejected.attempts == 1, "a 400 is not retried"
    assert report.usage.calls == 6 + 3 * 3 + 2
    assert set(report.failed) == {f"x{i}" for i in range(6, 11)}


def test_failed_requests_are_not_cached() -> None:
    healthy = False

    def fault(body: dict[str, Any], attempt: int) -> httpx.Response | None:
        return None if healthy else httpx.Response(502, text="bad gateway")

    endpoint = Scripted(fault)
    config = ReplayConfig(max_retries=0, **FAST)
    replayer = Replayer(make_client(endpoint), config=config)
    samples = make_samples(4)
    assert replayer.replay_sync(samples, ACTION).usage.failures == 4
    healthy = True
    report = replayer.replay_sync(samples, ACTION)
    assert report.usage.failures == 0 and report.usage.calls == 4


def test_each_attempt_has_a_timeout() -> None:
    async def stalls(request: httpx.Request) -> httpx.Response:
        if b"stuck" in request.content:
            await asyncio.sleep(5)
        return endpoint(request)

    endpoint = Scripted()
    config = ReplayConfig(timeout_s=0.05, max_retries=1, **FAST)
    samples = make_samples(3) + make_samples(2, "stuck")
    samples = [s.model_copy(update={"sample_id": f"t{i}"}) for i, s in enumerate(samples)]
    started = time.perf_counter()
    report = Replayer(make_client(stalls), config=config).replay_sync(samples, ACTION)
    assert time.perf_counter() - started < 2.0
    assert [o.ok for o in report.outcomes] == [True, True, True, False, False]
    stuck = report.outcomes[3]
    assert stuck.attempts == 2
    assert stuck.error_type in {"TimeoutError", "APITimeoutError"}
    assert sum(report.failures_by_type.values()) == 2


def test_retry_after_is_honoured() -> None:
    def fault(body: dict[str, Any], attempt: int) -> httpx.Response | None:
        if attempt == 1:
            return httpx.Response(429, json={"error": {}}, headers={"retry-after-ms": "200"})
        return None

    config = ReplayConfig(max_retries=1, backoff_initial_s=0.001, backoff_max_s=1.0)
    started = time.perf_counter()
    report = Replayer(make_client(Scripted(fault)), config=config).replay_sync(
        make_samples(2), ACTION
    )
    assert time.perf_counter() - started >= 0.2
    assert all(o.ok and o.attempts == 2 for o in report.outcomes)


def test_connection_errors_are_retried() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        seen[0] += 1
        if seen[0] <= 2:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=completion("finally"))

    seen = [0]
    config = ReplayConfig(max_retries=2, **FAST)
    report = Replayer(make_client(handler), config=config).replay_sync(make_samples(1), ACTION)
    assert report.outcomes[0].text == "finally"
    assert report.outcomes[0].attempts == 3


def test_rejected_key_on_every_sample_raises_without_leaking_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        message = f"Incorrect API key provided: {SECRET}."
        return httpx.Response(401, json={"error": {"message": message, "code": "invalid_api_key"}})

    calls = [0]
    replayer = Replayer(make_client(handler, api_key=SECRET), config=ReplayConfig(**FAST))
    with pytest.raises(ReplayError, match=re.escape("AuthenticationError (HTTP 401)")) as caught:
        replayer.replay_sync(make_samples(5), ACTION)
    assert "API key" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert calls[0] == 5, "a 401 is never retried"
    assert replayer.usage.calls == 5 and replayer.usage.failures == 5


def test_systemic_failure_can_be_reported_instead_of_raised() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": f"model not found ({SECRET})"}})

    config = ReplayConfig(raise_on_systemic=False, **FAST)
    replayer = Replayer(make_client(handler, api_key=SECRET), config=config)
    report = replayer.replay_sync(make_samples(3), ACTION)
    assert report.failures_by_type == {"NotFoundError": 3}
    assert all(
        SECRET not in (o.error or "") and "<redacted>" in (o.error or "") for o in report.outcomes
    )


def test_extra_parameters_travel_in_the_request_body() -> None:
    endpoint = Scripted()
    action = ACTION.model_copy(
        update={"max_tokens": 20, "seed": 3, "extra_parameters": {"stop": ["\n"], "top_k": 5}}
    )
    Replayer(make_client(endpoint)).replay_sync(make_samples(1), action)
    sent = endpoint.requests[0]
    assert (sent["max_tokens"], sent["seed"], sent["stop"], sent["top_k"]) == (20, 3, ["\n"], 5)


def test_replay_sync_works_inside_a_running_loop() -> None:
    endpoint = Scripted()
    replayer = Replayer(make_client(endpoint))

    async def caller() -> list[str]:
        return replayer.replay_sync(make_samples(2), ACTION).texts

    assert asyncio.run(caller()) == ["echo: hello 0", "echo: hello 1"]
    replayer.close()


def test_progress_bar_reports_every_sample(capsys: pytest.CaptureFixture[str]) -> None:
    replayer = Replayer(make_client(Scripted()))
    replayer.replay_sync(make_samples(3), ACTION)
    replayer.replay_sync(make_samples(5), ACTION, progress=True)
    assert "5/5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "history",
    [
        [],
        [{"role": "user", "content": "héllo \u2603"}],
        [
            {"role": "user", "content": [{"type": "text", "text": "multi"}]},
            {"role": "assistant", "content": None, "tool_calls": []},
            {"content": "order of keys", "role": "user", "name": "u"},
        ],
    ],
)
def test_fast_keys_equal_request_key(history: list[dict[str, Any]]) -> None:
    action = Action(
        system_prompt='SOP\n"quoted"', model="m", temperature=0.5, extra_parameters={"z": [1]}
    )
    sample = Sample(
        sample_id="k", chat_history=history, output_generation={"role": "assistant", "content": ""}
    )
    params = action.invocation_parameters()
    expected = request_key(action.model, build_messages(sample, action), params)
    assert _Keyer(action, params)(sample.chat_history) == expected


def test_cached_replay_is_fast() -> None:
    endpoint = Scripted()
    replayer = Replayer(make_client(endpoint))
    samples = make_samples(500)
    replayer.replay_sync(samples, ACTION)
    started = time.perf_counter()
    report = replayer.replay_sync(samples, ACTION)
    rate = len(samples) / (time.perf_counter() - started)
    assert report.usage.calls == 0
    assert rate > 5_000, f"cached replay ran at {rate:.0f} samples/s"


# --- the simulated model, through the real SDK: in process and over HTTP -----------------

SOP = (
    "## SOP\n"
    'if input mentions coffee or espresso: respond "I like coffee, too."; terminate\n'
    'else: respond "Well, I don\'t like sports."'
)
SIM_ACTION = Action(system_prompt=SOP, model="sim-keyword", temperature=0.0)


def sim_samples() -> list[Sample]:
    texts = ["I love espresso", "I ride my bike", "Coffee first!", "I swim a lot"] * 10
    return [
        Sample(
            sample_id=f"sim{i}",
            chat_history=[{"role": "user", "content": f"{text} (day {i})"}],
            output_generation={"role": "assistant", "content": ""},
        )
        for i, text in enumerate(texts)
    ]


def test_replay_through_the_simulated_model_follows_the_sop() -> None:
    from selfimprove_rl.simulated.transport import make_async_client

    replayer = Replayer(make_async_client())
    report = replayer.replay_sync(sim_samples(), SIM_ACTION)
    assert report.texts[:4] == [
        "I like coffee, too.",
        "Well, I don't like sports.",
        "I like coffee, too.",
        "Well, I don't like sports.",
    ]
    assert report.usage.calls == 40 and report.usage.failures == 0
    assert report.usage.prompt_tokens > 40 * 20
    assert all(o.prompt_tokens > 20 and o.completion_tokens > 0 for o in report.outcomes)
    again = replayer.replay_sync(sim_samples(), SIM_ACTION)
    assert again.usage.calls == 0 and again.texts == report.texts


def test_simulated_faults_are_retried_or_counted_never_raised() -> None:
    from selfimprove_rl.simulated.faults import FaultPlan
    from selfimprove_rl.simulated.transport import make_async_client

    plan = FaultPlan(fail_rate=0.4, seed=7, retry_after_s=0.0, timeout_hold_s=0.05)
    patient = ReplayConfig(max_retries=12, timeout_s=1.0, **FAST)
    report = Replayer(make_async_client(faults=plan), config=patient).replay_sync(
        sim_samples(), SIM_ACTION
    )
    assert report.usage.failures == 0
    assert report.usage.calls > 40, "faults were injected and retried"
    assert max(o.attempts for o in report.outcomes) > 1

    impatient = ReplayConfig(max_retries=0, timeout_s=1.0, **FAST)
    report = Replayer(make_async_client(faults=plan), config=impatient).replay_sync(
        sim_samples(), SIM_ACTION
    )
    expected = {
        "RateLimitError",
        "InternalServerError",
        "MalformedResponseError",
        "APITimeoutError",
    }
    assert 0 < report.usage.failures < 40
    assert set(report.failures_by_type) <= expected
    assert len(report.failures_by_type) >= 3
    assert sum(report.failures_by_type.values()) == report.usage.failures
    assert report.usage.calls == 40
    assert all(o.ok or (o.error and o.attempts == 1) for o in report.outcomes)


def test_replay_against_serve_sim_over_http() -> None:
    from selfimprove_rl.simulated.server import running_server

    with running_server(fail_rate=0.3, seed=2, timeout_hold_s=0.05) as url:
        client = openai.AsyncOpenAI(base_url=url, api_key="sk-local", max_retries=0)
        # backoff_max_s caps the server's Retry-After of 1 s.
        config = ReplayConfig(concurrency=8, max_retries=12, timeout_s=5.0, **FAST)
        replayer = Replayer(client, config=config)
        started = time.perf_counter()
        report = replayer.replay_sync(sim_samples(), SIM_ACTION)
        elapsed = time.perf_counter() - started
        replayer.close()
    assert report.usage.failures == 0, report.failures_by_type
    assert report.usage.calls > 40
    assert report.texts[0] == "I like coffee, too."
    assert elapsed < 10


# ---------------------------------------------------------------------- failures that end a run
def always(status: int) -> Callable[[dict[str, Any], int], httpx.Response]:
    return lambda body, attempt: httpx.Response(status, json={"error": {"message": "down"}})


def test_a_backend_failing_every_request_opens_the_breaker() -> None:
    endpoint = Scripted(always(500))
    config = ReplayConfig(max_retries=1, max_consecutive_failures=5, concurrency=1, **FAST)
    replayer = Replayer(make_client(endpoint), config=config)
    with pytest.raises(BackendUnavailableError) as caught:
        replayer.replay_sync(make_samples(40), ACTION)
    error = caught.value
    message = str(error)
    assert "5 requests in a row failed (max_consecutive_failures=5)" in message
    assert "http://scripted.test/v1" in message and "'scripted-model'" in message
    assert "\n" not in message and "InternalServerError" in error.last_error
    assert (error.base_url, error.model) == ("http://scripted.test/v1/", "scripted-model")
    assert endpoint.calls == 10, "stops after 5 failed requests (2 attempts each)"
    assert replayer.usage.calls == 10 and replayer.usage.retries == 5
    assert replayer.failed_attempts == {"http_500": 10}
    with pytest.raises(BackendUnavailableError):
        replayer.replay_sync(make_samples(2, "later"), ACTION)
    assert endpoint.calls == 10, "an open breaker sends nothing"
    replayer.reset_failures()
    with pytest.raises(BackendUnavailableError):
        replayer.replay_sync(make_samples(40, "again"), ACTION)


def test_a_high_failure_rate_opens_the_breaker_by_window() -> None:
    def fault(body: dict[str, Any], attempt: int) -> httpx.Response | None:
        index = int(body["messages"][-1]["content"].split()[-1])
        return None if index % 4 == 0 else httpx.Response(503, text="busy")

    config = ReplayConfig(
        max_retries=0,
        max_consecutive_failures=None,
        failure_window=20,
        max_failure_rate=0.5,
        concurrency=1,
        **FAST,
    )
    replayer = Replayer(make_client(Scripted(fault)), config=config)
    with pytest.raises(BackendUnavailableError, match=r"15 of the last 20 requests failed"):
        replayer.replay_sync(make_samples(100), ACTION)


def test_occasional_failures_are_counted_by_reason_and_never_raise() -> None:
    def fault(body: dict[str, Any], attempt: int) -> httpx.Response | None:
        index = int(body["messages"][-1]["content"].split()[-1])
        if index % 5 == 0:
            return httpx.Response(500, json={"error": {}})  # fails for good
        if index % 5 == 1 and attempt == 1:
            return httpx.Response(429, json={"error": {}}, headers={"retry-after": "0"})
        return None

    config = ReplayConfig(max_retries=1, max_consecutive_failures=3, **FAST)
    replayer = Replayer(make_client(Scripted(fault)), config=config)
    report = replayer.replay_sync(make_samples(50), ACTION)
    assert report.usage.failures == 10 and report.usage.retries == 10 + 10
    assert replayer.failed_samples == {"http_500": 10}
    assert replayer.failed_attempts == {"http_500": 20, "http_429": 10}
    assert {o.reason for o in report.outcomes if not o.ok} == {"http_500"}


def test_the_call_guard_caps_every_request_and_is_not_a_backend_failure() -> None:
    endpoint = Scripted(lambda body, attempt: httpx.Response(500) if attempt == 1 else None)
    config = ReplayConfig(max_retries=2, max_consecutive_failures=2, concurrency=1, **FAST)
    replayer = Replayer(make_client(endpoint), config=config)
    replayer.call_guard = lambda: replayer.calls_sent < 7
    report = replayer.replay_sync(make_samples(10), ACTION)
    assert endpoint.calls == 7 == replayer.usage.calls
    assert [o.ok for o in report.outcomes] == [True] * 3 + [False] * 7
    assert replayer.failed_samples["budget"] == 7
    assert report.outcomes[3].reason == "budget" and report.outcomes[3].attempts == 1


def test_plan_says_what_a_replay_would_cost() -> None:
    endpoint = Scripted()
    replayer = Replayer(make_client(endpoint))
    samples = make_samples(6) + make_samples(2)  # two repeated requests
    assert replayer.plan(samples, ACTION).calls == 6
    replayer.replay_sync(samples[:4], ACTION)
    plan = replayer.plan(samples, ACTION)
    assert plan.calls == 2 and [o is not None for o in plan.outcomes] == [True] * 4 + [
        False,
        False,
        True,
        True,
    ]
    assert endpoint.calls == 4, "planning sends nothing"


def test_prepaid_responses_are_charged_once_when_reused(tmp_path: Any) -> None:
    path = tmp_path / "cache.sqlite"
    with ResponseCache(path) as cache:
        first = Replayer(make_client(Scripted()), cache=cache)
        first.replay_sync(make_samples(3), ACTION)
        mark = cache.ledger_seq
        first.replay_sync(make_samples(2, "after"), ACTION)  # paid, then the process "dies"
    with ResponseCache(path) as cache:
        endpoint = Scripted()
        resumed = Replayer(make_client(endpoint), cache=cache)
        resumed.prepaid = {p.key: p for p in cache.payments_since(mark) if p.key}
        assert resumed.plan(make_samples(2, "after"), ACTION).calls == 2
        report = resumed.replay_sync(make_samples(2, "after"), ACTION)
        assert endpoint.calls == 0
        assert report.usage == ReplayUsage(calls=2, prompt_tokens=14, completion_tokens=6)
        again = resumed.replay_sync(make_samples(2, "after"), ACTION)
        assert again.usage == ReplayUsage(cache_hits=2) and not resumed.prepaid
