"""The serve-sim HTTP server in a subprocess, through the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import openai
import pytest

from selfimprove_rl.errors import SimulatedModelError
from selfimprove_rl.simulated import FaultInjector, FaultPlan
from selfimprove_rl.simulated.server import running_server

MESSAGES = [
    {"role": "system", "content": 'if input mentions tea: respond "Tea!"'},
    {"role": "user", "content": "tea"},
]


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    with running_server(latency_ms=200) as base_url:
        yield base_url


def test_server_answers_like_the_in_process_model(slow_server: str) -> None:
    assert slow_server.startswith("http://127.0.0.1:") and slow_server.endswith("/v1")
    client = openai.OpenAI(base_url=slow_server, api_key="unused", max_retries=0)
    started = time.perf_counter()
    reply = client.chat.completions.create(model="sim-keyword", messages=MESSAGES)
    assert time.perf_counter() - started >= 0.2
    assert reply.choices[0].message.content == "Tea!"
    assert reply.usage is not None and reply.usage.prompt_tokens == 20
    assert [m.id for m in client.models.list()] == [
        "sim-keyword",
        "sim-small",
        "sim-large",
        "sim-noisy",
        "sim-max-cue",
    ]
    with pytest.raises(openai.NotFoundError, match="Did you mean 'sim-small'"):
        client.chat.completions.create(model="sim-smal", messages=MESSAGES)


def test_server_latency_overlaps_across_concurrent_requests(slow_server: str) -> None:
    async def main() -> float:
        client = openai.AsyncOpenAI(base_url=slow_server, api_key="unused", max_retries=0)
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model="sim-large", messages=MESSAGES)
                for _ in range(20)
            )
        )
        await client.close()
        assert {r.choices[0].message.content for r in replies} == {"Tea!"}
        return time.perf_counter() - started

    assert asyncio.run(main()) < 2.0  # 20 x 200 ms overlapping: in series they take 4 s


def test_every_fault_kind_over_http() -> None:
    plan = FaultPlan(fail_rate=1.0, seed=5, timeout_hold_s=1.0)
    injector = FaultInjector(plan)
    expected = [injector.draw() for _ in range(8)]
    assert set(expected) == {"rate_limit", "server_error", "timeout", "malformed"}
    seen: list[str] = []
    with running_server(fail_rate=1.0, seed=5, timeout_hold_s=1.0) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=0.5)
        for _ in expected:
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="sim-large", messages=MESSAGES
                )
                raw.parse()
                seen.append("answered")
            except openai.RateLimitError as error:
                assert error.response.headers["retry-after"] == "1"
                seen.append("rate_limit")
            except openai.InternalServerError:
                seen.append("server_error")
            except openai.APITimeoutError:
                seen.append("timeout")
            except json.JSONDecodeError:
                seen.append("malformed")
    assert seen == expected


def test_phoenix_falls_back_to_tool_calling_over_http() -> None:
    from phoenix.evals import LLM, create_classifier

    with running_server(reject_response_format=True) as base_url:
        llm = LLM(provider="openai", model="sim-large", base_url=base_url, api_key="unused")
        classifier = create_classifier(
            name="correctness",
            prompt_template="Output: {output}\nReference: {reference}\nCorrect?",
            llm=llm,
            choices={"correct": 1.0, "incorrect": 0.0},
        )
        same = classifier.evaluate({"output": "Tea!", "reference": "tea"})
        differ = classifier.evaluate({"output": "Coffee!", "reference": "tea"})
    assert [same[0].label, differ[0].label] == ["correct", "incorrect"]


def test_invalid_options_fail_fast_with_the_reason() -> None:
    with pytest.raises(SimulatedModelError, match="fail_rate"), running_server(fail_rate=2.0):
        pass
    done = subprocess.run(
        [sys.executable, "-m", "selfimprove_rl.cli", "serve-sim", "--fault-kinds", "meteor"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "serve-sim: error: Invalid serve-sim fault options" in done.stderr
