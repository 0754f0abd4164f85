"""Backend: which server answers, and how clients for it are made (keys never stored)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pandas as pd
import pytest
from pydantic import ValidationError

from selfimprove_rl.backend import PLACEHOLDER_API_KEY, SIMULATED_REQUEST_RATE, Backend
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.simulated import FaultPlan
from selfimprove_rl.simulated.server import running_server

SECRET = "sk-test-secret-value-0123456789"
MESSAGES = [
    {"role": "system", "content": 'if input mentions tea: respond "Tea!"'},
    {"role": "user", "content": "tea"},
]


def test_default_is_the_in_process_simulated_model() -> None:
    backend = Backend()
    assert backend.in_process and backend.deterministic
    assert backend.describe() == "simulated (in-process)"
    reply = backend.sync_client().chat.completions.create(model="sim-large", messages=MESSAGES)
    assert reply.choices[0].message.content == "Tea!"

    async def main() -> str | None:
        client = backend.async_client()
        answer = await client.chat.completions.create(model="sim-large", messages=MESSAGES)
        await client.close()
        return answer.choices[0].message.content

    assert asyncio.run(main()) == "Tea!"
    assert backend.sync_client().max_retries == 0


def test_in_process_faults_reach_the_clients() -> None:
    backend = Backend(faults=FaultPlan(fail_rate=1.0, kinds=("server_error",)))
    with pytest.raises(openai.InternalServerError):
        backend.sync_client().chat.completions.create(model="sim-large", messages=MESSAGES)


def test_real_openai_needs_the_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_OPENAI_KEY", raising=False)
    backend = Backend(kind="openai", api_key_env="MY_OPENAI_KEY")
    assert not backend.deterministic
    assert backend.describe() == "openai (api.openai.com)"
    with pytest.raises(ConfigError, match="environment variable MY_OPENAI_KEY, which is not set"):
        backend.sync_client()
    monkeypatch.setenv("MY_OPENAI_KEY", SECRET)
    client = backend.async_client()
    assert client.api_key == SECRET and client.max_retries == 0
    for shown in (repr(backend), str(backend), backend.model_dump_json(), backend.describe()):
        assert SECRET not in shown


def test_compatible_server_without_a_key_gets_a_placeholder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = Backend(kind="openai", base_url="http://localhost:8000/v1")
    assert backend.describe() == "openai-compatible (localhost:8000)"
    assert backend.sync_client().api_key == PLACEHOLDER_API_KEY
    kwargs = backend.phoenix_llm_kwargs()
    assert kwargs["base_url"] == "http://localhost:8000/v1"
    assert kwargs["api_key"] == PLACEHOLDER_API_KEY
    assert "initial_per_second_request_rate" not in kwargs  # Phoenix's limiter protects servers


def test_simulated_server_by_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with running_server() as base_url:
        backend = Backend(base_url=base_url, timeout_s=5)
        assert backend.sync_client().api_key == PLACEHOLDER_API_KEY  # never the real key
        assert not backend.in_process and backend.deterministic
        assert backend.describe() == f"simulated ({base_url.split('/')[2]})"
        reply = backend.sync_client().chat.completions.create(model="sim-small", messages=MESSAGES)
    assert reply.choices[0].message.content == "Tea!"


def test_phoenix_kwargs_in_process_carry_httpx_clients_on_one_transport() -> None:
    kwargs = Backend().phoenix_llm_kwargs()
    sync_client = kwargs["sync_client_kwargs"]["http_client"]
    async_client = kwargs["async_client_kwargs"]["http_client"]
    assert isinstance(sync_client, httpx.Client) and isinstance(async_client, httpx.AsyncClient)
    assert sync_client._transport is async_client._transport
    assert "http_client" not in kwargs
    assert kwargs["initial_per_second_request_rate"] == SIMULATED_REQUEST_RATE


def test_phoenix_judge_on_the_simulated_model_is_not_throttled() -> None:
    from phoenix.evals import LLM, create_classifier, evaluate_dataframe

    llm = LLM(provider="openai", model="sim-large", **Backend().phoenix_llm_kwargs())
    classifier = create_classifier(
        name="match",
        prompt_template="Output: {output}\nReference: {reference}",
        llm=llm,
        choices={"match": 1.0, "no_match": 0.0},
    )
    frame = pd.DataFrame({"output": [f"a {i % 2}" for i in range(60)], "reference": ["a 0"] * 60})
    scored = evaluate_dataframe(dataframe=frame, evaluators=[classifier], hide_tqdm_bar=True)
    assert [s["label"] for s in scored["match_score"]] == ["match", "no_match"] * 30
    # Phoenix's default start rate (5 requests/s) would take ~10 s for these 60 rows; the
    # speed itself is measured in benchmarks, here we check the limiter starts where we set it.
    (limiter,) = llm._rate_limiters
    assert limiter._throttler._initial_rate == SIMULATED_REQUEST_RATE


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"kind": "openai", "faults": FaultPlan(latency_ms=5)}, "in-process simulated"),
        ({"base_url": "http://x/v1", "faults": FaultPlan(latency_ms=5)}, "in-process simulated"),
        ({"base_url": "localhost:8000"}, "http(s) URL"),
        ({"kind": "anthropic"}, "kind"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_invalid_backends_are_rejected(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Backend(**fields)  # type: ignore[arg-type]


def test_transport_only_for_the_in_process_backend() -> None:
    with pytest.raises(ConfigError, match="Expected the in-process simulated backend"):
        Backend(kind="openai", base_url="http://localhost:1/v1").transport()
