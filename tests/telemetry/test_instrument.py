"""The eval instrumentor on a real Phoenix server, with the simulated model as the judge."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from selfimprove_rl.errors import ConfigError
from selfimprove_rl.telemetry import (
    PhoenixSource,
    evaluating,
    flush_evals,
    instrument_evals,
    is_instrumented,
    uninstrument_evals,
)
from selfimprove_rl.telemetry.instrument import (
    ANNOTATION_IDENTIFIER,
    ATTR,
    META_CONSTANTS_ID,
    META_VARIABLES,
)

from .conftest import COFFEE, INPUTS, TEMPLATE, send_traffic, traced_rows, wait_until

pytestmark = pytest.mark.phoenix
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def annotations_of(client: Any, project: str, rows: Any) -> Any:
    return client.spans.get_span_annotations_dataframe(
        span_ids=list(rows["context.span_id"]), project_identifier=project
    )


def spans_of_kind(client: Any, project: str, kind: str) -> list[Any]:
    """Spans of one kind; none while Phoenix has not created the project yet (404)."""
    import httpx

    try:
        return list(client.spans.get_spans(project_identifier=project, span_kind=kind, limit=1000))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return []
        raise


def test_evaluate_records_evaluator_span_and_annotation(
    px_client: Any, project: str, recorder: Any, classifier: Any
) -> None:
    replies = send_traffic(INPUTS[:2])
    rows = traced_rows(px_client, project, 2)
    scores = classifier.evaluate(rows.iloc[0].to_dict())
    assert recorder.flush()
    assert recorder.stats.classifications == 1 and recorder.stats.linked == 1
    notes = annotations_of(px_client, project, rows)
    assert len(notes) == 1
    note = notes.iloc[0]
    assert note.name == rows.iloc[0]["context.span_id"]  # index is the span id
    assert note["annotation_name"] == "matches_reference"
    assert note["result.label"] == scores[0].label
    assert note["result.score"] == scores[0].score
    assert note["result.explanation"] == scores[0].explanation
    variables = note["metadata"][META_VARIABLES]
    assert variables == {"output": rows.iloc[0]["output"], "reference": COFFEE}
    assert rows.iloc[0]["output"] in replies
    wait_until(lambda: len(spans_of_kind(px_client, project, "EVALUATOR")) == 1)
    (evaluator_span,) = spans_of_kind(px_client, project, "EVALUATOR")
    attributes = evaluator_span["attributes"]
    assert attributes[ATTR + "span_id"] == rows.iloc[0]["context.span_id"]
    assert evaluator_span["context"]["trace_id"] == rows.iloc[0]["context.trace_id"]
    assert evaluator_span["parent_id"] == rows.iloc[0]["context.span_id"]
    assert attributes[ATTR + "constants_id"] == note["metadata"][META_CONSTANTS_ID]
    constants = json.loads(attributes[ATTR + "constants"])
    assert constants["template"] == TEMPLATE
    assert constants["choices"] == {"correct": 1.0, "incorrect": 0.0}
    assert (constants["eval_model"], constants["eval_provider"]) == ("sim-large", "openai")
    assert constants["template_variables"] == ["output", "reference"]


def test_judge_calls_stay_out_of_the_traced_project(
    px_client: Any, project: str, recorder: Any, classifier: Any
) -> None:
    send_traffic(INPUTS)
    rows = traced_rows(px_client, project, len(INPUTS))
    for row in rows.to_dict("records"):
        classifier.evaluate(row)
    assert recorder.flush()
    wait_until(lambda: len(spans_of_kind(px_client, project, "EVALUATOR")) == len(INPUTS))
    llm_spans = spans_of_kind(px_client, project, "LLM")
    assert len(llm_spans) == len(INPUTS)  # no judge calls among them
    assert {s["attributes"]["llm.input_messages.0.message.role"] for s in llm_spans} == {"system"}


def test_evaluate_dataframe_records_every_row(
    px_client: Any, project: str, recorder: Any, classifier: Any
) -> None:
    from phoenix.evals import evaluate_dataframe

    send_traffic(INPUTS)
    rows = traced_rows(px_client, project, len(INPUTS))
    result = evaluate_dataframe(dataframe=rows, evaluators=[classifier], hide_tqdm_bar=True)
    assert recorder.flush()
    assert recorder.stats.linked == len(INPUTS)
    notes = annotations_of(px_client, project, rows)
    assert sorted(notes.index) == sorted(rows["context.span_id"])
    expected = {
        sid: score["label"]
        for sid, score in zip(
            rows["context.span_id"], result["matches_reference_score"], strict=True
        )
    }
    assert {
        sid: label for sid, label in zip(notes.index, notes["result.label"], strict=True)
    } == expected
    assert set(expected.values()) == {"correct", "incorrect"}


def test_async_path_records_with_the_context_manager(
    px_client: Any, project: str, recorder: Any, classifier: Any
) -> None:
    from phoenix.evals import async_evaluate_dataframe

    send_traffic(INPUTS)
    rows = traced_rows(px_client, project, len(INPUTS))
    first, rest = rows.iloc[0], rows.iloc[1:]

    async def run() -> Any:
        with evaluating(first["context.span_id"], first["context.trace_id"]):
            await classifier.async_evaluate({"output": first["output"], "reference": COFFEE})
        return await async_evaluate_dataframe(
            dataframe=rest, evaluators=[classifier], concurrency=2, hide_tqdm_bar=True
        )

    asyncio.run(run())
    assert recorder.flush()
    assert recorder.stats.linked == len(INPUTS) and recorder.stats.unlinked == 0
    notes = annotations_of(px_client, project, rows)
    assert sorted(notes.index) == sorted(rows["context.span_id"])
    wait_until(lambda: len(spans_of_kind(px_client, project, "EVALUATOR")) == len(INPUTS))
    assert len(spans_of_kind(px_client, project, "LLM")) == len(INPUTS)


def test_builtin_metric_with_message_template_is_recorded(
    phoenix_server: Any, px_client: Any, project: str, recorder: Any, judge_llm: Any
) -> None:
    from phoenix.evals.metrics.correctness import CorrectnessEvaluator

    send_traffic(INPUTS[:1])
    rows = traced_rows(px_client, project, 1)
    metric = CorrectnessEvaluator(llm=judge_llm)
    row = rows.iloc[0]
    metric.evaluate(
        {"input": row["input"], "output": row["output"], "span_id": row["context.span_id"]}
    )
    assert recorder.flush()
    frames = PhoenixSource(phoenix_server.url, project, progress=False).fetch(since=EPOCH)
    (constants,) = frames.evals["constants"]
    assert constants["name"] == "correctness"
    assert constants["template_format"] == "messages"
    messages = json.loads(constants["template"])
    assert isinstance(messages, list) and messages[0]["role"]
    assert constants["choices"] == {"correct": 1.0, "incorrect": 0.0}


def off_rail_judge() -> Any:
    """A judge server (real SDK, scripted transport) that answers a label outside the rails."""
    import httpx
    from phoenix.evals import LLM

    def answer(request: httpx.Request) -> httpx.Response:
        content = json.dumps({"explanation": "looks purple", "label": "purple"})
        return httpx.Response(
            200,
            json={
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "judge",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
            },
        )

    transport = httpx.MockTransport(answer)
    return LLM(
        provider="openai",
        model="judge",
        api_key="sk-test",
        base_url="http://judge.test/v1",
        sync_client_kwargs={"http_client": httpx.Client(transport=transport)},
    )


def test_unlinked_and_failed_classifications_are_counted(
    px_client: Any, project: str, recorder: Any, classifier: Any
) -> None:
    from phoenix.evals import create_classifier

    classifier.evaluate({"output": "x", "reference": "y"})  # no span named
    with evaluating("not-a-span-id"):
        classifier.evaluate({"output": "x", "reference": "x"})
    failing = create_classifier(
        name="colour",
        prompt_template="Output: {output}",
        llm=off_rail_judge(),
        choices={"blue": 1.0, "green": 0.0},
    )
    with evaluating("0123456789abcdef"), pytest.raises(ValueError, match="invalid label 'purple'"):
        failing.evaluate({"output": "x"})
    assert recorder.flush()
    stats = recorder.stats
    assert (stats.classifications, stats.failed_classifications) == (3, 1)
    assert (stats.unlinked, stats.invalid_span_ids, stats.annotations_written) == (2, 1, 0)
    wait_until(lambda: len(spans_of_kind(px_client, project, "EVALUATOR")) == 3)
    evaluator_spans = spans_of_kind(px_client, project, "EVALUATOR")
    by_name = {s["attributes"][ATTR + "name"]: s for s in evaluator_spans}
    assert by_name["colour"]["status_code"] == "ERROR"
    assert "purple" in by_name["colour"]["status_message"]
    assert json.loads(by_name["colour"]["attributes"][ATTR + "constants"])["labels"] == [
        "blue",
        "green",
    ]


def test_instrumentation_is_idempotent_and_reversible(tracing: Any, classifier: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from phoenix.evals.evaluators import ClassificationEvaluator

    original = ClassificationEvaluator.__dict__["_evaluate"]
    first = instrument_evals(tracing)
    try:
        assert instrument_evals(tracing) is first
        assert is_instrumented()
        assert ClassificationEvaluator.__dict__["_evaluate"].__wrapped__ is original
        with pytest.raises(ConfigError, match="already instrumented with another"):
            instrument_evals(TracerProvider(), endpoint="http://127.0.0.1:1")
    finally:
        stats = uninstrument_evals()
    assert stats is not None
    assert uninstrument_evals() is None
    assert not is_instrumented()
    assert ClassificationEvaluator.__dict__["_evaluate"] is original
    assert flush_evals() is True
    classifier.evaluate({"output": "a", "reference": "a"})  # plain, unrecorded
    assert first.stats.classifications == 0


def test_instrument_needs_a_provider_and_an_endpoint() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    with pytest.raises(ConfigError, match="endpoint='http://host:6006'"):
        instrument_evals(TracerProvider())


def test_eval_constants_are_recovered_from_phoenix_alone(
    phoenix_server: Any, px_client: Any, project: str, tracing: Any, classifier: Any
) -> None:
    send_traffic(INPUTS)
    rows = traced_rows(px_client, project, len(INPUTS))
    recorder = instrument_evals(tracing)
    try:
        for row in rows.to_dict("records"):
            classifier.evaluate(row)
    finally:
        uninstrument_evals()
    del recorder, classifier
    # a fresh source, knowing only the URL and the project
    source = PhoenixSource(phoenix_server.url, project, progress=False)
    frames = source.fetch(since=EPOCH)
    assert source.summary.replayable_evals == ["matches_reference"]
    checkpoint = source.checkpoint()
    (constants,) = checkpoint.eval_constants
    assert constants.template == TEMPLATE
    assert constants.choices == {"correct": 1.0, "incorrect": 0.0}
    assert constants.output_variable == "output"
    assert constants.eval_model == "sim-large" and constants.eval_provider == "openai"
    assert len(frames.evals) == 1


# --- Phoenix's own documented flow (evals on traces) ------------------------------------------

DOCUMENTED_FLOW = '''
"""Phoenix's guide "Running Evals on Traces", with instrument_evals() on and no uninstrument."""
import asyncio
import json
import sys
import time

from phoenix.client import Client
from phoenix.evals import LLM, async_evaluate_dataframe, create_classifier
from phoenix.evals.utils import to_annotation_dataframe

from selfimprove_rl.backend import Backend
from selfimprove_rl.telemetry import instrument_evals, setup_tracing

url, project, reference = sys.argv[1:4]
inputs = sys.argv[4:]
provider = setup_tracing(url, project)  # batch export, as in production
instrument_evals(provider)
client = Backend().sync_client()
for text in inputs:
    client.chat.completions.create(
        model="sim-large",
        messages=[{"role": "system", "content": "be helpful"}, {"role": "user", "content": text}],
    )
provider.force_flush()

for _ in range(100):  # Phoenix shows spans ~0.1 s after export
    spans_df = Client(base_url=url).spans.get_spans_dataframe(project_identifier=project)
    if len(spans_df) == len(inputs):
        break
    time.sleep(0.1)
eval_df = spans_df[["context.span_id", "attributes.llm.output_messages"]].copy()
eval_df.set_index("context.span_id", inplace=True)
eval_df["output"] = eval_df["attributes.llm.output_messages"].apply(
    lambda x: x[0]["message.content"]
)
eval_df["reference"] = reference
judge = create_classifier(
    name="matches_reference",
    prompt_template="Output: {output}\\nReference: {reference}\\nDoes the output match?",
    llm=LLM(provider="openai", model="sim-large", **Backend().phoenix_llm_kwargs()),
    choices={"correct": 1.0, "incorrect": 0.0},
)
results_df = asyncio.run(
    async_evaluate_dataframe(eval_df, evaluators=[judge], hide_tqdm_bar=True)
)
annotation_df = to_annotation_dataframe(results_df)
Client(base_url=url).spans.log_span_annotations_dataframe(dataframe=annotation_df)
print(json.dumps(sorted(annotation_df["label"])))
# The script ends here: no flush_evals(), no uninstrument_evals().
'''


def run_script(code: str, folder: Any, *args: str) -> str:
    """Run a Python script as a user would (its own process); return its stdout."""
    import os
    import subprocess
    import sys

    script = folder / "script.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PHOENIX_DISCOVER_CONFIG": "false"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_phoenixs_documented_flow_gives_a_checkpoint(
    phoenix_server: Any, px_client: Any, project: str, tmp_path: Any
) -> None:
    stdout = run_script(DOCUMENTED_FLOW, tmp_path, phoenix_server.url, project, COFFEE, *INPUTS)
    labels = json.loads(stdout.strip().splitlines()[-1])
    source = PhoenixSource(phoenix_server.url, project, progress=False)
    source.fetch(since=EPOCH)
    checkpoint = source.checkpoint()
    assert len(checkpoint.samples) == len(INPUTS)
    assert sorted(s.eval_labels["matches_reference"] for s in checkpoint.samples) == labels
    (constants,) = checkpoint.eval_constants
    assert constants.output_variable == "output"
    assert {s.reference for s in checkpoint.samples} == {COFFEE}
    # The user's own annotations and the recorder's sit side by side (distinct identifiers).
    notes = px_client.spans.get_span_annotations_dataframe(
        span_ids=[s.span_id for s in checkpoint.samples], project_identifier=project
    )
    assert sorted(set(notes["identifier"].fillna(""))) == ["", ANNOTATION_IDENTIFIER]
    assert len(notes) == 2 * len(INPUTS)


TRACE_EVALUATE_EXIT = '''
"""Trace calls and judge them in one script, then end it (no flush, no uninstrument)."""
import sys

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from phoenix.evals import LLM, create_classifier

from selfimprove_rl.backend import Backend
from selfimprove_rl.telemetry import evaluating, instrument_evals, setup_tracing

url, project, reference = sys.argv[1:4]
provider = setup_tracing(url, project)  # batch export: the LLM spans leave at exit
local = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(local), replace_default_processor=False)
instrument_evals(provider)
client = Backend().sync_client()
for text in sys.argv[4:]:
    client.chat.completions.create(
        model="sim-large", messages=[{"role": "user", "content": text}]
    )
judge = create_classifier(
    name="matches_reference",
    prompt_template="Output: {output}\\nReference: {reference}\\nDoes the output match?",
    llm=LLM(provider="openai", model="sim-large", **Backend().phoenix_llm_kwargs()),
    choices={"correct": 1.0, "incorrect": 0.0},
)
for span in local.get_finished_spans():
    context = span.get_span_context()
    with evaluating(format(context.span_id, "016x"), format(context.trace_id, "032x")):
        output = span.attributes["llm.output_messages.0.message.content"]
        judge.evaluate({"output": output, "reference": reference})
'''


def test_annotations_are_written_when_the_script_just_ends(
    phoenix_server: Any, px_client: Any, project: str, tmp_path: Any
) -> None:
    """Phoenix answers 404 until the batched LLM spans arrive; only the exit flush waits."""
    run_script(TRACE_EVALUATE_EXIT, tmp_path, phoenix_server.url, project, COFFEE, *INPUTS)
    wait_until(lambda: len(spans_of_kind(px_client, project, "LLM")) == len(INPUTS))
    source = PhoenixSource(phoenix_server.url, project, progress=False)
    source.fetch(since=EPOCH)
    assert len(source.checkpoint().samples) == len(INPUTS)


def test_evaluate_dataframe_links_rows_through_a_span_id_index(
    px_client: Any, project: str, recorder: Any, classifier: Any
) -> None:
    from phoenix.evals import evaluate_dataframe

    send_traffic(INPUTS[:3])
    rows = traced_rows(px_client, project, 3).set_index("context.span_id")
    unrelated = rows.reset_index(drop=True)
    unrelated.index.name = "row"  # an index that is not a span id links nothing
    evaluate_dataframe(dataframe=unrelated.iloc[:1], evaluators=[classifier], hide_tqdm_bar=True)
    result = evaluate_dataframe(dataframe=rows, evaluators=[classifier], hide_tqdm_bar=True)
    assert list(result.index) == list(rows.index)  # the user's frame is untouched
    assert "context.span_id" not in result.columns
    assert recorder.flush()
    assert (recorder.stats.linked, recorder.stats.unlinked) == (3, 1)
    notes = annotations_of(px_client, project, rows.reset_index())
    assert sorted(notes.index) == sorted(rows.index)
    assert set(notes["identifier"]) == {ANNOTATION_IDENTIFIER}
