"""PhoenixClassifier through the real phoenix.evals code path and the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from selfimprove_rl.checkpoint import EvalConstants, Sample
from selfimprove_rl.errors import EvaluatorError
from selfimprove_rl.evals import EvalItem, PhoenixClassifier

TEMPLATE = "Compare.\nOutput: {output}\nReference: {reference}\nAnswer correct or incorrect."
CORRECTNESS = EvalConstants(
    name="correctness",
    template=TEMPLATE,
    choices={"correct": 1.0, "incorrect": 0.0},
    eval_model="judge-model",
    eval_parameters={"temperature": 0.0},
)


def run(classifier: PhoenixClassifier, items: list[EvalItem]) -> list[Any]:
    return asyncio.run(classifier.evaluate(items))


def test_labels_map_to_scores_through_the_rails(
    judge: Any, sample_factory: Callable[..., Sample]
) -> None:
    classifier = PhoenixClassifier(CORRECTNESS, llm_kwargs=judge.llm_kwargs())
    items = [
        EvalItem(sample_factory("a"), "I like coffee, too."),
        EvalItem(sample_factory("b"), "Well, I don't like sports."),
    ]
    results = run(classifier, items)
    assert [(r.sample_id, r.label, r.score) for r in results] == [
        ("a", "correct", 1.0),
        ("b", "incorrect", 0.0),
    ]
    assert results[0].explanation == "judged correct" and results[0].error is None
    assert judge.calls == 2 == classifier.calls
    sent = judge.bodies[0]
    assert sent["model"] == "judge-model" and sent["temperature"] == 0.0
    assert sent["response_format"]["type"] == "json_schema"
    assert "Output: I like coffee, too.\nReference: I like coffee, too." in judge.prompts[0]


def test_the_judge_is_never_asked_the_same_question_twice(
    judge: Any, sample_factory: Callable[..., Sample]
) -> None:
    classifier = PhoenixClassifier(CORRECTNESS, llm_kwargs=judge.llm_kwargs())
    items = [EvalItem(sample_factory(f"s{i}"), "I like coffee, too.") for i in range(4)]
    first = run(classifier, items)
    second = run(classifier, items)
    assert judge.calls == 1
    assert classifier.calls == 1 and classifier.cache_hits == 7
    assert [r.sample_id for r in second] == ["s0", "s1", "s2", "s3"]
    assert {r.score for r in first + second} == {1.0}


def test_pending_calls_counts_the_questions_a_budget_must_reserve(
    judge: Any, sample_factory: Callable[..., Sample]
) -> None:
    classifier = PhoenixClassifier(CORRECTNESS, llm_kwargs=judge.llm_kwargs())
    items = [EvalItem(sample_factory(f"s{i}"), f"reply {i % 3}") for i in range(6)]
    assert classifier.pending_calls(items) == 3 and judge.calls == 0
    run(classifier, items[:2])
    assert classifier.pending_calls(items) == 1
    run(classifier, items)
    assert classifier.pending_calls(items) == 0 and judge.calls == classifier.calls == 3


def test_variables_come_from_the_sample_then_fallbacks(
    judge: Any, sample_factory: Callable[..., Sample]
) -> None:
    constants = CORRECTNESS.model_copy(
        update={
            "template": "Q: {input}\nContext: {context}\nOutput: {output}\nReference: {reference}"
        }
    )
    classifier = PhoenixClassifier(constants, llm_kwargs=judge.llm_kwargs())
    recorded = {"correctness": {"context": "menu", "reference": "Recorded ref", "output": "old"}}
    with_context = sample_factory("ok", eval_variables=recorded)
    without_context = sample_factory("missing")
    results = run(
        classifier, [EvalItem(with_context, "Recorded ref"), EvalItem(without_context, "x")]
    )
    assert judge.calls == 1
    assert (
        "Q: I love espresso\nContext: menu\nOutput: Recorded ref\nReference: Recorded ref"
        in judge.prompts[0]
    )
    assert results[0].score == 1.0, "the new output replaces the recorded one"
    assert results[1].score == 0.0 and results[1].label is None
    assert results[1].error is not None and "['context']" in results[1].error
    assert classifier.errors == 1


def test_a_label_outside_the_rails_scores_zero_with_an_error(
    scripted_judge: Any, sample_factory: Callable[..., Sample]
) -> None:
    judge = scripted_judge(lambda prompt, attempt: "maybe" if "sports" in prompt else None)
    classifier = PhoenixClassifier(CORRECTNESS, llm_kwargs=judge.llm_kwargs())
    items = [
        EvalItem(sample_factory("a"), "I like sports."),
        EvalItem(sample_factory("b"), "I like coffee, too."),
    ]
    results = run(classifier, items)
    assert results[0].score == 0.0 and "maybe" in (results[0].error or "")
    assert results[1].score == 1.0
    assert classifier.errors == 1
    run(classifier, items[:1])
    assert judge.calls == 3, "a verdict outside the rails is not cached"


def test_transient_judge_faults_are_retried(
    scripted_judge: Any, sample_factory: Callable[..., Sample]
) -> None:
    def flaky(prompt: str, attempt: int) -> httpx.Response | None:
        return httpx.Response(503, json={"error": {"message": "busy"}}) if attempt == 1 else None

    judge = scripted_judge(flaky)
    classifier = PhoenixClassifier(CORRECTNESS, llm_kwargs=judge.llm_kwargs(), max_retries=2)
    classifier._backoff_s = 0.001
    results = run(classifier, [EvalItem(sample_factory("a"), "I like coffee, too.")])
    assert results[0].score == 1.0
    assert judge.calls == 2 == classifier.calls


def test_a_failing_judge_fails_samples_and_a_rejected_key_raises(
    scripted_judge: Any, sample_factory: Callable[..., Sample]
) -> None:
    def broken(prompt: str, attempt: int) -> httpx.Response:
        if "sports" in prompt:
            return httpx.Response(400, json={"error": {"message": "prompt too long"}})
        return httpx.Response(
            401, json={"error": {"message": "bad key sk-judge-secret-0123456789"}}
        )

    judge = scripted_judge(broken)
    classifier = PhoenixClassifier(CORRECTNESS, llm_kwargs=judge.llm_kwargs(), max_retries=0)
    mixed = run(
        classifier,
        [EvalItem(sample_factory("a"), "I like sports."), EvalItem(sample_factory("b"), "coffee")],
    )
    assert [r.score for r in mixed] == [0.0, 0.0]
    assert "Error code: 400 - prompt too long" in (mixed[0].error or "")
    assert "AuthenticationError" in (mixed[1].error or "")
    assert all("sk-judge-secret" not in (r.error or "") for r in mixed)
    assert classifier.errors == 2
    with pytest.raises(EvaluatorError, match=re.escape("AuthenticationError (HTTP 401)")) as caught:
        run(
            classifier,
            [EvalItem(sample_factory("c"), "tea"), EvalItem(sample_factory("d"), "cake")],
        )
    assert "sk-judge-secret" not in str(caught.value)


def test_rails_with_descriptions_go_through_forced_tool_calls(
    judge: Any, sample_factory: Callable[..., Sample]
) -> None:
    constants = CORRECTNESS.model_copy(
        update={
            "label_descriptions": {"correct": "same meaning", "incorrect": "different meaning"},
            "include_explanation": False,
        }
    )
    classifier = PhoenixClassifier(constants, llm_kwargs=judge.llm_kwargs())
    results = run(classifier, [EvalItem(sample_factory("a"), "I like coffee, too.")])
    assert results[0].label == "correct" and results[0].score == 1.0
    assert judge.bodies[0]["tool_choice"]["type"] == "function"


def test_message_list_templates_and_score_scales(
    judge: Any, sample_factory: Callable[..., Sample]
) -> None:
    messages = [
        {"role": "system", "content": "You grade answers."},
        {"role": "user", "content": "Output: {output}\nReference: {reference}"},
    ]
    constants = EvalConstants(
        name="graded",
        template=json.dumps(messages),
        template_format="messages",
        choices={"correct": 5, "incorrect": 1},
        eval_model="judge-model",
        weight=2.0,
    )
    classifier = PhoenixClassifier(constants, llm_kwargs=judge.llm_kwargs())
    results = run(
        classifier,
        [EvalItem(sample_factory("a"), "I like coffee, too."), EvalItem(sample_factory("b"), "no")],
    )
    assert [r.score for r in results] == [1.0, 0.0]
    assert classifier.weight == 2.0
    first = judge.bodies[0]["messages"][0]
    assert first["content"] == "You grade answers."
    assert first["role"] in {"system", "developer"}  # Phoenix picks the role by model name


def test_misconfigured_classifiers_are_refused(judge: Any) -> None:
    no_output = CORRECTNESS.model_copy(update={"template": "Reference: {reference}"})
    with pytest.raises(EvaluatorError, match="does not use its output variable 'output'"):
        PhoenixClassifier(no_output, llm_kwargs=judge.llm_kwargs())
    no_model = CORRECTNESS.model_copy(update={"eval_model": None})
    with pytest.raises(EvaluatorError, match="names no judge model"):
        PhoenixClassifier(no_model, llm_kwargs=judge.llm_kwargs())
    assert (
        PhoenixClassifier(no_model, llm_kwargs=judge.llm_kwargs(), model="other").model == "other"
    )
    with pytest.raises(EvaluatorError, match="Expects classifier eval constants"):
        PhoenixClassifier(EvalConstants(name="em", kind="exact_match"), llm_kwargs={})


def test_judge_calls_are_not_traced(judge: Any, sample_factory: Callable[..., Sample]) -> None:
    import openai
    from openinference.instrumentation.openai import OpenAIInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        classifier = PhoenixClassifier(CORRECTNESS, llm_kwargs=judge.llm_kwargs())
        run(classifier, [EvalItem(sample_factory("a"), "I like coffee, too.")])
        assert judge.calls == 1
        assert exporter.get_finished_spans() == ()
        traced = openai.OpenAI(
            api_key="x",
            base_url="http://judge.test/v1",
            http_client=httpx.Client(transport=httpx.MockTransport(judge)),
        )
        traced.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Output: a\nReference: a"}]
        )
        assert len(exporter.get_finished_spans()) == 1, "the instrumentor is live"
    finally:
        instrumentor.uninstrument()


@pytest.mark.parametrize("reject_response_format", [False, True])
def test_classifier_judged_by_the_simulated_model(
    reject_response_format: bool, sample_factory: Callable[..., Sample]
) -> None:
    """The real phoenix.evals path end to end: json_schema, or its forced-tool-call fallback."""
    from selfimprove_rl.backend import Backend
    from selfimprove_rl.simulated.faults import FaultPlan

    backend = Backend(faults=FaultPlan(reject_response_format=reject_response_format))
    constants = EvalConstants(
        name="correctness",
        template="Is the output right?\nOutput: {output}\nReference: {reference}",
        choices={"correct": 1.0, "partially correct": 0.5, "incorrect": 0.0},
        eval_model="sim-large",
    )
    classifier = PhoenixClassifier(constants, llm_kwargs=backend.phoenix_llm_kwargs())
    sample = sample_factory("s", reference="I see you are a person of taste! I like coffee, too.")
    outputs = [
        "I see you are a person of taste! I like coffee, too.",
        "You are a person of taste! I like coffee too.",
        "Well, I don't like sports.",
    ]
    results = run(classifier, [EvalItem(sample, output) for output in outputs])
    assert [r.label for r in results] == ["correct", "correct", "incorrect"]
    assert [r.score for r in results] == [1.0, 1.0, 0.0]
    assert all(r.explanation and r.error is None for r in results)
    assert classifier.calls == 3
    run(classifier, [EvalItem(sample, output) for output in outputs])
    assert classifier.calls == 3, "verdicts are cached"
