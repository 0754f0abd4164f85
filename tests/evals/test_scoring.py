"""score_outcomes: failures score 0 everywhere, evaluators see successes only, run together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import httpx
import openai
import pytest

from selfimprove_rl.checkpoint import Action, Sample
from selfimprove_rl.errors import EvaluatorError
from selfimprove_rl.evals import EvalItem, EvalResult, ExactMatch, score_outcomes
from selfimprove_rl.replay import ReplayConfig, Replayer, ReplayOutcome


def ok(sample_id: str, text: str) -> ReplayOutcome:
    return ReplayOutcome(sample_id=sample_id, message={"role": "assistant", "content": text})


def failed(sample_id: str) -> ReplayOutcome:
    return ReplayOutcome(sample_id=sample_id, error="InternalServerError: boom", error_type="X")


class Recording:
    """Scores 1 for every output it is shown; records what it saw; may wait for a partner."""

    def __init__(self, name: str, weight: float = 1.0) -> None:
        self.name = name
        self.weight = weight
        self.seen: list[str] = []
        self.started = asyncio.Event()
        self.partner: Recording | None = None

    async def evaluate(self, items: Sequence[EvalItem]) -> list[EvalResult]:
        self.started.set()
        if self.partner is not None:
            await asyncio.wait_for(self.partner.started.wait(), timeout=2)
        self.seen.extend(item.output for item in items)
        return [
            EvalResult(name=self.name, sample_id=i.sample.sample_id, score=1.0, label="yes")
            for i in items
        ]


def test_failed_replays_score_zero_and_are_listed(sample_factory: Callable[..., Sample]) -> None:
    samples = [sample_factory(f"s{i}", reference="I like coffee, too.") for i in range(4)]
    outcomes = [ok("s0", "I like coffee, too."), failed("s1"), ok("s2", "nope"), failed("s3")]
    first, second = Recording("first", 3.0), Recording("second", 1.0)
    first.partner, second.partner = second, first  # deadlocks unless they run concurrently
    exact = ExactMatch(name="exact")
    table = asyncio.run(score_outcomes([first, second, exact], samples, outcomes))
    assert first.seen == second.seen == ["I like coffee, too.", "nope"]
    assert table.sample_ids == ["s0", "s1", "s2", "s3"]
    assert table.scores == {
        "first": [1.0, 0.0, 1.0, 0.0],
        "second": [1.0, 0.0, 1.0, 0.0],
        "exact": [1.0, 0.0, 0.0, 0.0],
    }
    assert table.failed == {"s1": "InternalServerError: boom", "s3": "InternalServerError: boom"}
    assert table.labels["first"] == ["yes", None, "yes", None]
    assert table.labels["exact"] == ["match", None, "no_match", None]
    assert table.weights == {"first": 3.0, "second": 1.0, "exact": 1.0}
    assert table.per_eval() == {"first": 0.5, "second": 0.5, "exact": 0.25}
    assert table.aggregate() == pytest.approx((3 * 0.5 + 0.5 + 0.25) / 5)
    assert table.eval_errors == {}


def test_evaluator_errors_are_listed(sample_factory: Callable[..., Sample]) -> None:
    samples = [sample_factory("a", reference=None), sample_factory("b")]
    outcomes = [ok("a", "x"), ok("b", "I like coffee, too.")]
    table = asyncio.run(score_outcomes([ExactMatch()], samples, outcomes))
    assert table.scores["exact_match"] == [0.0, 1.0]
    assert list(table.eval_errors["exact_match"]) == ["a"]
    assert table.failed == {}


def test_every_replay_failed(sample_factory: Callable[..., Sample]) -> None:
    recording = Recording("r")
    table = asyncio.run(score_outcomes([recording], [sample_factory("a")], [failed("a")]))
    assert recording.seen == []
    assert table.scores == {"r": [0.0]} and list(table.failed) == ["a"]


def test_contract_breaches_are_refused(sample_factory: Callable[..., Sample]) -> None:
    samples = [sample_factory("a"), sample_factory("b")]
    with pytest.raises(EvaluatorError, match="one replay outcome per sample"):
        asyncio.run(score_outcomes([ExactMatch()], samples, [ok("a", "x")]))
    with pytest.raises(EvaluatorError, match="outcomes in sample order"):
        asyncio.run(score_outcomes([ExactMatch()], samples, [ok("b", "x"), ok("a", "x")]))
    with pytest.raises(EvaluatorError, match="unique evaluator names"):
        asyncio.run(
            score_outcomes([ExactMatch(), ExactMatch()], samples, [ok("a", "x"), ok("b", "y")])
        )

    class Short(Recording):
        async def evaluate(self, items: Sequence[EvalItem]) -> list[EvalResult]:
            return (await super().evaluate(items))[:1]

    with pytest.raises(EvaluatorError, match="returned 1 results for 2 outputs"):
        asyncio.run(score_outcomes([Short("short")], samples, [ok("a", "x"), ok("b", "y")]))


def test_replay_then_score_end_to_end(sample_factory: Callable[..., Sample]) -> None:
    def endpoint(request: httpx.Request) -> httpx.Response:
        text = request.content.decode()
        if "broken" in text:
            return httpx.Response(500, json={"error": {"message": "down"}})
        reply = "I like coffee, too." if "espresso" in text else "Well, I don't like sports."
        return httpx.Response(
            200,
            json={
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5},
            },
        )

    client = openai.AsyncOpenAI(
        api_key="sim",
        base_url="http://sim.test/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(endpoint)),
    )
    samples = [
        sample_factory("coffee", user="I love espresso"),
        sample_factory("sports", user="I watch football"),
        sample_factory("broken", user="broken request"),
    ]
    replayer = Replayer(client, config=ReplayConfig(max_retries=1, backoff_initial_s=0.001))
    action = Action(system_prompt="SOP", model="sim-large")

    async def go() -> object:
        report = await replayer.replay(samples, action)
        return await score_outcomes([ExactMatch()], samples, report.outcomes)

    table = asyncio.run(go())
    assert table.scores == {"exact_match": [1.0, 0.0, 0.0]}  # type: ignore[attr-defined]
    assert list(table.failed) == ["broken"]  # type: ignore[attr-defined]
