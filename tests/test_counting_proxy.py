"""The peers benchmark's counting proxy, in front of a real ``selfimprove-rl serve-sim`` server."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Action, Sample
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.replay import ReplayConfig, Replayer
from selfimprove_rl.simulated.server import running_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from peers.counting_proxy import CountingProxy

MESSAGES = [{"role": "user", "content": "I love espresso"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with running_server() as url:
        yield url


def _client(proxy: CountingProxy, role: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url(role), api_key="sk-test", max_retries=0)


def test_counts_calls_per_role_and_model_and_forwards_answers(upstream: str) -> None:
    direct = openai.OpenAI(base_url=upstream, api_key="sk-test", max_retries=0)
    expected = direct.chat.completions.create(model="sim-large", messages=MESSAGES, temperature=0)
    with CountingProxy(upstream) as proxy:
        target, reflection = _client(proxy, "target"), _client(proxy, "reflection")
        for _ in range(3):
            got = target.chat.completions.create(
                model="sim-large", messages=MESSAGES, temperature=0
            )
            assert got.choices[0].message.content == expected.choices[0].message.content
        reflection.chat.completions.create(model="sim-small", messages=MESSAGES)
        assert [m.id for m in target.models.list()]
        counts = proxy.counts()
    assert counts.roles() == {"reflection": 1, "target": 3}
    assert counts.calls("target") == counts.calls("target", field="forwarded") == 3
    assert counts.calls(field="cached") == 0
    assert counts.other_requests == 1
    (tally,) = [t for t in counts.tallies if t.role == "target"]
    assert tally.model == "sim-large"
    assert tally.prompt_tokens == 3 * expected.usage.prompt_tokens  # type: ignore[union-attr]


def test_cache_serves_only_deterministic_calls_and_still_counts_them(
    upstream: str, tmp_path: Path
) -> None:
    cache = ResponseCache(tmp_path / "proxy.sqlite")
    with CountingProxy(upstream, cache=cache) as proxy:
        client = _client(proxy, "target")
        first = client.chat.completions.create(model="sim-large", messages=MESSAGES, temperature=0)
        again = client.chat.completions.create(model="sim-large", messages=MESSAGES, temperature=0)
        for _ in range(2):  # sampled: never from the cache
            client.chat.completions.create(model="sim-large", messages=MESSAGES, temperature=0.7)
        client.chat.completions.create(model="sim-large", messages=MESSAGES)  # server default
        counts = proxy.counts()
    assert again.choices[0].message.content == first.choices[0].message.content
    assert counts.calls("target") == 5
    assert counts.calls(field="cached") == 1
    assert counts.calls(field="forwarded") == 4
    cache.close()
    # A new process finds what this one paid for.
    with (
        ResponseCache(tmp_path / "proxy.sqlite") as reopened,
        CountingProxy(upstream, cache=reopened) as proxy,
    ):
        _client(proxy, "target").chat.completions.create(
            model="sim-large", messages=MESSAGES, temperature=0
        )
        assert proxy.counts().calls(field="cached") == 1


def test_errors_are_counted_as_calls_and_errors(upstream: str) -> None:
    with CountingProxy(upstream) as proxy:
        with pytest.raises(openai.NotFoundError, match="Unknown simulated model 'nope'"):
            _client(proxy, "target").chat.completions.create(model="nope", messages=MESSAGES)
        counts = proxy.counts()
    assert counts.calls("target") == 1
    assert counts.calls("target", field="errors") == 1


def test_an_unreachable_upstream_is_a_counted_502_that_names_it() -> None:
    with CountingProxy("http://127.0.0.1:9/v1", timeout_s=5) as proxy:
        with pytest.raises(
            openai.InternalServerError, match=re.escape("could not reach http://127.0.0.1:9")
        ):
            _client(proxy, "target").chat.completions.create(model="m", messages=MESSAGES)
        assert proxy.counts().calls("target", field="errors") == 1


def test_snapshots_subtract_to_what_happened_between(upstream: str) -> None:
    with CountingProxy(upstream) as proxy:
        client = _client(proxy, "target")
        client.chat.completions.create(model="sim-large", messages=MESSAGES, temperature=0)
        before = proxy.counts()
        client.chat.completions.create(model="sim-large", messages=MESSAGES, temperature=0)
        _client(proxy, "coach").chat.completions.create(model="sim-small", messages=MESSAGES)
        between = proxy.counts() - before
    assert between.roles() == {"coach": 1, "target": 1}


def test_our_replayer_through_the_proxy_is_counted_exactly(upstream: str) -> None:
    samples = [
        Sample(
            sample_id=f"s{i}",
            chat_history=[{"role": "user", "content": f"message number {i} about coffee"}],
            output_generation={"role": "assistant", "content": "ok"},
        )
        for i in range(24)
    ]
    action = Action(system_prompt="Reply briefly.", model="sim-large", temperature=0.0)
    with CountingProxy(upstream) as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.base_url("score"), api_key="k", max_retries=0)
        replayer = Replayer(client, config=ReplayConfig(concurrency=8))
        try:
            report = replayer.replay_sync(samples, action)
        finally:
            replayer.close()
        counts = proxy.counts()
    assert not report.failed
    assert counts.calls("score") == report.usage.calls == len(samples)


def test_paths_and_roles_are_checked(upstream: str) -> None:
    with CountingProxy(upstream) as proxy:
        with pytest.raises(ConfigError, match=re.escape("got 'Target!'")):
            proxy.base_url("Target!")
        response = httpx.get(f"http://127.0.0.1:{proxy.port}/")
        assert response.status_code == 404
        assert "CountingProxy.base_url(role)" in response.json()["error"]["message"]
    with pytest.raises(ConfigError, match="Expects the upstream as an http"):
        CountingProxy("localhost:8080")
