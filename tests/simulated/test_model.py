"""The simulated model through the real openai SDK (in process): rules, tiers, determinism."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from selfimprove_rl.simulated import SIMULATED_MODELS, SimulatedChatModel, make_async_client
from selfimprove_rl.simulated.model import generic_reply
from selfimprove_rl.simulated.transport import SimulatedTransport, make_sync_client

COFFEE = "I see you are a person of taste! I like coffee, too."
SPORTS = "Well, I don't like sports."
SOP = "\n".join(
    [
        "## SOP",
        "Be warm and friendly.",
        'if input mentions tea or "green tea": respond "Tea!"',
        f'else if input is about coffee, espresso or coffee drinks: respond "{COFFEE}"',
        'example: "I play tennis every weekend." -> "No sports, thanks."',
        'example: "We watched the match at the stadium." -> "No sports, thanks."',
        'example: "I bake bread on Sundays." -> "Bread is great."',
        'else: respond "Tell me more."',
        'else: respond "Second else is never used."',
    ]
)


@pytest.fixture(scope="module")
def client() -> openai.OpenAI:
    return make_sync_client()


def ask(
    client: openai.OpenAI, user: str, system: str = SOP, model: str = "sim-large", **params: Any
) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        **params,
    )
    content = reply.choices[0].message.content
    assert content is not None
    return content


def test_rules_apply_in_documented_order(client: openai.OpenAI) -> None:
    # a literal rule that matches wins over everything after it
    assert ask(client, "Green tea or an espresso?") == "Tea!"
    # semantic rule: no literal term, but the input is about coffee
    assert ask(client, "I grind my beans every morning for a cappuccino.") == COFFEE
    # no rule matches: the nearest example answers
    assert ask(client, "I went running and then played football.") == "No sports, thanks."
    # nothing is close: the first else answers
    assert ask(client, "What is the capital of Mongolia?") == "Tell me more."


def test_without_else_the_reply_is_generic_and_derived_from_the_input(
    client: openai.OpenAI,
) -> None:
    system = 'if input mentions tea: respond "Tea!"\nBe concise.'
    user = "Which planets have rings around them?"
    assert ask(client, user, system) == generic_reply(user)
    assert '"planets rings around"' in generic_reply(user)  # content words, stopwords dropped


def test_unparseable_guidance_has_no_effect(client: openai.OpenAI) -> None:
    vague = SOP + "\nAlways answer questions about geography with facts.\nBe brief."
    for user in ("Green tea?", "What is the capital of Mongolia?", "I love a flat white."):
        assert ask(client, user, vague) == ask(client, user, SOP)


def test_first_matching_rule_wins_even_when_a_later_one_fits_better(
    client: openai.OpenAI,
) -> None:
    system = "\n".join(
        [
            'if input mentions morning: respond "Good morning!"',
            'if input mentions espresso: respond "Espresso!"',
        ]
    )
    assert ask(client, "An espresso every morning", system) == "Good morning!"
    assert ask(client, "An espresso at night", system) == "Espresso!"


def test_developer_messages_count_as_system_prompt(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="sim-keyword",
        messages=[
            {"role": "developer", "content": 'if input mentions tea: respond "Tea!"'},
            {"role": "user", "content": "tea"},
            {"role": "assistant", "content": "Tea!"},
            {"role": "user", "content": [{"type": "text", "text": "More TEA"}]},
        ],
    )
    assert reply.choices[0].message.content == "Tea!"


def test_keyword_tier_ignores_semantic_rules_and_examples(client: openai.OpenAI) -> None:
    assert ask(client, "I grind my beans for a cappuccino.", model="sim-keyword") == "Tell me more."
    assert ask(client, "I went running.", model="sim-keyword") == "Tell me more."
    assert ask(client, "Green tea please", model="sim-keyword") == "Tea!"


def test_small_tier_reads_only_the_first_three_lines(client: openai.OpenAI) -> None:
    system = "\n".join(
        [
            'if input mentions alpha: respond "A"',
            'if input mentions beta: respond "B"',
            'if input mentions gamma: respond "C"',
            'if input mentions delta: respond "D"',
            'else: respond "E"',
        ]
    )
    assert ask(client, "gamma", system, model="sim-small") == "C"
    assert ask(client, "delta", system, model="sim-small") == generic_reply("delta")
    assert ask(client, "delta", system, model="sim-large") == "D"
    assert ask(client, "zeta", system, model="sim-large") == "E"


def test_small_tier_is_stricter_and_cheaper_than_large() -> None:
    # accuracy consequences are measured in test_calibration.py
    small, large = SIMULATED_MODELS["sim-small"], SIMULATED_MODELS["sim-large"]
    assert small.semantic_threshold > large.semantic_threshold
    assert small.example_threshold > large.example_threshold
    assert small.cost(1000, 100) < large.cost(1000, 100)


def test_noisy_tier_deviates_at_a_seeded_rate_that_grows_with_temperature() -> None:
    model = SimulatedChatModel()
    transport = SimulatedTransport(model)
    client = make_sync_client(transport)
    system = 'if input mentions tea: respond "Tea is lovely."\nelse: respond "Tell me more."'

    def deviation_rate(temperature: float, seed: int = 0) -> float:
        wrong = 0
        for i in range(150):
            reply = ask(
                client, f"tea number {i}", system, "sim-noisy", temperature=temperature, seed=seed
            )
            wrong += reply != "Tea is lovely."
        return wrong / 150

    cold, hot = deviation_rate(0.0), deviation_rate(1.5)
    spec = SIMULATED_MODELS["sim-noisy"]
    assert abs(cold - spec.noise_probability(0.0)) < 0.07
    assert abs(hot - spec.noise_probability(1.5)) < 0.12
    assert hot > cold + 0.2
    assert deviation_rate(1.5) == hot  # the same requests deviate the same way
    replies = {ask(client, "tea", system, "sim-noisy", temperature=2.0, seed=s) for s in range(30)}
    assert len(replies) > 2  # seeds change the draws; deviations take several forms


def test_identical_requests_get_identical_responses(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "model": "sim-noisy",
        "messages": [
            {"role": "system", "content": SOP},
            {"role": "user", "content": "Green tea?"},
        ],
        "temperature": 0.7,
        "seed": 11,
    }
    first = client.chat.completions.with_raw_response.create(**request)
    second = make_sync_client().chat.completions.with_raw_response.create(**request)
    assert first.http_response.content == second.http_response.content
    body = json.loads(first.http_response.content)
    assert body["id"].startswith("chatcmpl-sim-") and body["created"] == 0
    other = client.chat.completions.with_raw_response.create(**{**request, "seed": 12})
    assert json.loads(other.http_response.content)["id"] != body["id"]


def test_usage_counts_every_prompt_token(client: openai.OpenAI) -> None:
    def usage(system: str) -> tuple[int, int]:
        reply = client.chat.completions.create(
            model="sim-large",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "tea"}],
        )
        assert reply.usage is not None
        return reply.usage.prompt_tokens, reply.usage.completion_tokens

    base = 'if input mentions tea: respond "Tea!"'
    examples = "\n".join(f'example: "I like item {i}" -> "Item {i}!"' for i in range(10))
    short, long = usage(base), usage(base + "\n" + examples)
    assert short == (3 + 10 + 3 + 1 + 3, 2)  # overheads + system + user tokens; "Tea!"
    assert long[0] == short[0] + 10 * 15  # 15 tokens per example line; newlines are free
    assert long[1] == short[1]


def test_max_tokens_cuts_the_reply(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="sim-large",
        messages=[{"role": "system", "content": SOP}, {"role": "user", "content": "tea"}],
        max_tokens=1,
    )
    assert reply.choices[0].message.content == "Tea"
    assert reply.choices[0].finish_reason == "length"


def test_unknown_model_is_a_404_that_suggests_the_closest(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        ask(client, "hi", model="sim-larg")
    assert caught.value.code == "model_not_found"
    assert "Did you mean 'sim-large'?" in caught.value.message
    assert "sim-keyword, sim-large, sim-max-cue, sim-noisy, sim-small" in caught.value.message


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"stream": True}, "does not stream"),
        ({"temperature": 3}, "temperature in [0, 2]"),
        ({"n": 0}, "n to be an integer"),
        ({"response_format": {"type": "json_object"}}, "json_object"),
    ],
)
def test_bad_requests_are_400s_that_say_what_was_expected(
    client: openai.OpenAI, params: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=fragment.replace("[", r"\[")):
        ask(client, "hi", **params)


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == list(SIMULATED_MODELS)
    assert client.models.retrieve("sim-small").id == "sim-small"


def test_async_client_answers_the_same() -> None:
    async def main() -> list[str | None]:
        client = make_async_client()
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="sim-large",
                    messages=[
                        {"role": "system", "content": SOP},
                        {"role": "user", "content": user},
                    ],
                )
                for user in ("Green tea?", "What is the capital of Mongolia?")
            )
        )
        await client.close()
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(main()) == ["Tea!", "Tell me more."]


def test_large_tier_adds_up_the_evidence_of_each_reply() -> None:
    model = SimulatedChatModel()
    sop = "If the message is about coffee, reply with exactly: Coffee!\nOtherwise, reply: Hm."
    demos = [
        ("I ran a marathon this morning", "Sports!"),
        ("Our team won the match", "Sports!"),
        ("I lift weights at the gym", "Sports!"),
    ]
    strongest = model.decide(
        SIMULATED_MODELS["sim-max-cue"], sop, "Espresso then the gym", demos=demos
    )
    summed = model.decide(SIMULATED_MODELS["sim-large"], sop, "Espresso then the gym", demos=demos)
    # One strong rule wins alone; three moderate demonstrations outweigh it together.
    assert (strongest.reply, strongest.source) == ("Coffee!", "rule")
    assert (summed.reply, summed.source) == ("Sports!", "example")
    assert summed.similarity is not None and summed.similarity < (strongest.similarity or 0)
    for tier in ("sim-max-cue", "sim-large"):  # one clear cue: both readings agree
        decision = model.decide(
            SIMULATED_MODELS[tier], sop, "I love a strong cup of coffee", demos=demos
        )
        assert decision.reply == "Coffee!"


def test_large_tier_neither_copies_a_listed_reply_nor_a_reply_demonstrated_once() -> None:
    model = SimulatedChatModel()
    menu = "Reply with exactly one of these replies, word for word, and nothing else:\n- Coffee!"
    question = "I love a strong cup of coffee"
    max_cue = model.decide(SIMULATED_MODELS["sim-max-cue"], menu, question)
    large = model.decide(SIMULATED_MODELS["sim-large"], menu, question)
    assert max_cue.reply == "Coffee!" and large.source == "generic"
    once = [("Espresso every morning", "Coffee!")]
    twice = [*once, ("A latte with oat milk", "Coffee!")]
    assert model.decide(
        SIMULATED_MODELS["sim-max-cue"], "Be nice.", question, demos=once
    ).reply == ("Coffee!")
    assert model.decide(SIMULATED_MODELS["sim-large"], "Be nice.", question, demos=once).source == (
        "generic"
    )
    assert model.decide(SIMULATED_MODELS["sim-large"], "Be nice.", question, demos=twice).reply == (
        "Coffee!"
    )
