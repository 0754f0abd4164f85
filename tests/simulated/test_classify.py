"""Classification answers: the documented rule, and the real phoenix.evals code paths."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pandas as pd
import pytest

from selfimprove_rl.backend import Backend
from selfimprove_rl.simulated.classify import (
    find_sections,
    judge,
    order_rails,
    rail_for,
    token_f1,
)
from selfimprove_rl.simulated.faults import FaultPlan
from selfimprove_rl.simulated.transport import IN_PROCESS_BASE_URL, SimulatedTransport

COFFEE = "I see you are a person of taste! I like coffee, too."
SPORTS = "Well, I don't like sports."
TEMPLATE = (
    "You compare a chatbot's output with the expected reply.\n"
    "Input: {input}\nOutput: {output}\nReference: {reference}\n"
    "Is the output correct or incorrect?"
)


def test_sections_from_tags_labelled_lines_and_begin_data() -> None:
    tags = (
        "<input>\nhi\n</input>\n<output>hello there</output>\n"
        "<expected_output>hello</expected_output>"
    )
    assert find_sections(tags) == find_sections(tags.replace("expected_output", "reference"))
    assert find_sections(tags).output == "hello there"
    assert find_sections(tags).reference == "hello"
    lines = "Rate it.\nQuestion: what?\nModel answer: 42\nGround truth: forty-two\nRate now."
    assert (find_sections(lines).input, find_sections(lines).output) == ("what?", "42")
    assert find_sections(lines).reference == "forty-two"
    begin = (
        "[BEGIN DATA]\n************\n[Question]: Q?\n************\n"
        "[Reference answer]:\nline one\nline two\n************\n[Answer]: A\n[END DATA]"
    )
    sections = find_sections(begin)
    assert (sections.input, sections.reference, sections.output) == (
        "Q?",
        "line one\nline two",
        "A",
    )
    assert find_sections("Nothing labelled here.").output is None


@pytest.mark.parametrize(
    ("rails", "best_first"),
    [
        (["correct", "incorrect"], ["correct", "incorrect"]),
        (["incorrect", "correct"], ["correct", "incorrect"]),
        (["irrelevant", "relevant"], ["relevant", "irrelevant"]),
        (["not_similar", "similar"], ["similar", "not_similar"]),
        (["hallucinated", "factual"], ["factual", "hallucinated"]),
        (["bad", "good", "ok"], ["good", "bad", "ok"]),
        (["alpha", "beta"], ["alpha", "beta"]),
    ],
)
def test_rails_are_ordered_best_first(rails: list[str], best_first: list[str]) -> None:
    assert order_rails(rails) == best_first


def test_scores_map_to_rails_and_explanations_say_why() -> None:
    assert rail_for(0.8, ["yes", "no"], 0.8) == "yes"
    assert rail_for(0.79, ["yes", "no"], 0.8) == "no"
    assert token_f1(COFFEE, "I like coffee, too.") == 0.5  # P = 4/12, R = 4/4
    same = judge(f"Output: {COFFEE}\nReference: {COFFEE.upper()}", ["incorrect", "correct"])
    assert (same.label, same.score) == ("correct", 1.0)
    assert "matches the reference exactly" in same.explanation
    differ = judge(f"Output: {SPORTS}\nReference: {COFFEE}", ["correct", "incorrect"])
    assert differ.label == "incorrect" and "token F1 0.22" in differ.explanation
    nothing = judge("Just a question?", ["correct", "incorrect"])
    assert nothing.label == "incorrect" and "no output section" in nothing.explanation


def test_without_a_reference_relevance_to_the_input_decides() -> None:
    def relevance(first: str, second: str) -> float:
        return 0.9 if "coffee" in first and "coffee" in second else 0.1

    prompt = "Input: {x}\nResponse: I like coffee, too."
    relevant = judge(prompt.format(x="I drink coffee"), ["relevant", "unrelated"], relevance)
    assert relevant.label == "relevant" and "No reference found" in relevant.explanation
    unrelated = judge(prompt.format(x="I play golf"), ["relevant", "unrelated"], relevance)
    assert unrelated.label == "unrelated"


class RecordingTransport(SimulatedTransport):
    """The simulated transport, keeping the request bodies it answered."""

    def __init__(self, faults: FaultPlan | None = None) -> None:
        super().__init__(faults=faults)
        self.bodies: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.read()))
        return super().handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(await request.aread()))
        return await super().handle_async_request(request)


def phoenix_llm(transport: SimulatedTransport) -> Any:
    from phoenix.evals import LLM

    return LLM(
        provider="openai",
        model="sim-large",
        api_key="sk-unused",
        base_url=IN_PROCESS_BASE_URL,
        sync_client_kwargs={"http_client": httpx.Client(transport=transport)},
        async_client_kwargs={"http_client": httpx.AsyncClient(transport=transport)},
    )


def correctness(llm: Any, choices: Any = None) -> Any:
    from phoenix.evals import create_classifier

    return create_classifier(
        name="correctness",
        prompt_template=TEMPLATE,
        llm=llm,
        choices=choices or {"correct": 1.0, "incorrect": 0.0},
    )


def test_phoenix_classifier_structured_output_sync_and_async() -> None:
    transport = RecordingTransport()
    classifier = correctness(phoenix_llm(transport))
    good = classifier.evaluate({"input": "I love espresso", "output": COFFEE, "reference": COFFEE})
    assert (good[0].label, good[0].score) == ("correct", 1.0)
    assert "exactly" in (good[0].explanation or "")
    bad = asyncio.run(
        classifier.async_evaluate({"input": "I ski", "output": COFFEE, "reference": SPORTS})
    )
    assert (bad[0].label, bad[0].score) == ("incorrect", 0.0)
    assert all(body["response_format"]["type"] == "json_schema" for body in transport.bodies)
    assert not any("tools" in body for body in transport.bodies)


def test_phoenix_evaluate_dataframe() -> None:
    from phoenix.evals import evaluate_dataframe

    frame = pd.DataFrame(
        {
            "input": ["I love espresso", "I run marathons", "I like lattes"],
            "output": [COFFEE, COFFEE, "I like coffee, too."],
            "reference": [COFFEE, SPORTS, COFFEE],
        }
    )
    classifier = correctness(phoenix_llm(RecordingTransport()))
    scored = evaluate_dataframe(dataframe=frame, evaluators=[classifier])
    labels = [score["label"] for score in scored["correctness_score"]]
    assert labels == ["correct", "incorrect", "incorrect"]


def test_phoenix_falls_back_to_tool_calling_after_a_400() -> None:
    transport = RecordingTransport(FaultPlan(reject_response_format=True))
    classifier = correctness(phoenix_llm(transport))
    result = classifier.evaluate({"input": "hi", "output": COFFEE, "reference": COFFEE})
    assert result[0].label == "correct"
    first, second = transport.bodies
    assert "response_format" in first and "tools" not in first
    assert second["tool_choice"]["function"]["name"] == second["tools"][0]["function"]["name"]


def test_rails_with_descriptions_use_tool_calling_directly() -> None:
    transport = RecordingTransport()
    classifier = correctness(
        phoenix_llm(transport),
        {"incorrect": (0.0, "says something else"), "correct": (1.0, "same reply")},
    )
    result = classifier.evaluate({"input": "x", "output": SPORTS, "reference": SPORTS})
    assert (result[0].label, result[0].score) == ("correct", 1.0)
    assert [("tools" in body) for body in transport.bodies] == [True]
    rails = transport.bodies[0]["tools"][0]["function"]["parameters"]["properties"]["label"]
    assert [option["const"] for option in rails["oneOf"]] == ["incorrect", "correct"]


def test_backend_phoenix_kwargs_drive_the_in_process_judge() -> None:
    from phoenix.evals import LLM

    llm = LLM(provider="openai", model="sim-small", **Backend().phoenix_llm_kwargs())
    result = correctness(llm).evaluate({"input": "x", "output": "same", "reference": "Same!"})
    assert result[0].label == "correct"
