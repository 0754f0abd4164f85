"""PhoenixSource and FileSource against a real Phoenix server: windows, paging, zones, files."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from selfimprove_rl.errors import ConfigError, DataError, TelemetryError
from selfimprove_rl.telemetry import FileSource, PhoenixSource, TelemetryFrames, TelemetrySource
from selfimprove_rl.telemetry.instrument import META_CONSTANTS_ID, META_VARIABLES

from .conftest import llm_span, log_spans

pytestmark = pytest.mark.phoenix


def ten_spans(t0: datetime) -> list[dict[str, Any]]:
    return [llm_span(t0 + timedelta(seconds=i), user=f"q{i}") for i in range(10)]


def test_spans_and_annotations_round_trip(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime
) -> None:
    spans = ten_spans(t0)
    log_spans(px_client, project, spans)
    px_client.spans.log_span_annotations(
        span_annotations=[
            {
                "name": "tone",
                "annotator_kind": "LLM",
                "span_id": s["context"]["span_id"],
                "result": {"label": "ok", "score": 0.5, "explanation": "fine"},
                "metadata": {META_VARIABLES: {"output": "x"}},
            }
            for s in spans[:4]
        ],
        sync=True,
    )
    source = PhoenixSource(phoenix_server.url, project, progress=False)
    assert isinstance(source, TelemetrySource)
    frames = source.fetch(since=t0)
    assert source.frames is frames
    assert list(frames.spans["span_id"]) == [s["context"]["span_id"] for s in spans]
    first = frames.spans.iloc[0]
    assert first["start_time"] == t0
    assert first["attributes"]["llm.input_messages"][1] == {
        "message.role": "user",
        "message.content": "q0",
    }
    assert first["attributes"]["llm.model_name"] == "sim-large"
    notes = frames.annotations.sort_values("span_id")
    assert len(notes) == 4
    assert set(notes["name"]) == {"tone"}
    assert list(notes["score"]) == [0.5] * 4
    assert notes.iloc[0]["metadata"] == {META_VARIABLES: {"output": "x"}}
    summary = source.summary
    assert (summary.spans, summary.evaluated_spans, summary.annotations) == (10, 4, 4)
    assert summary.evals_by_name == {"tone": 4}
    assert summary.evals_without_constants == ["tone"]
    assert "LLM spans:        10" in str(summary)


def test_paging_walks_past_the_client_limit(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime
) -> None:
    spans = ten_spans(t0)
    # three share one timestamp across a page boundary; two share another
    for i in (4, 5, 6):
        spans[i]["start_time"] = spans[4]["start_time"]
    spans[9]["start_time"] = spans[8]["start_time"]
    log_spans(px_client, project, spans)
    limited = px_client.spans.get_spans_dataframe(project_identifier=project, limit=3)
    assert len(limited) == 3  # what the client alone gives: the newest three
    source = PhoenixSource(phoenix_server.url, project, page_size=2, progress=False)
    frames = source.fetch(since=t0)
    assert sorted(frames.spans["span_id"]) == sorted(s["context"]["span_id"] for s in spans)
    assert frames.spans["span_id"].is_unique
    assert frames.spans["start_time"].is_monotonic_increasing
    assert source.summary.pages > 5


def test_a_page_of_identical_timestamps_widens_instead_of_looping(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime
) -> None:
    spans = [llm_span(t0, user=f"same {i}") for i in range(7)]
    log_spans(px_client, project, spans)
    frames = PhoenixSource(phoenix_server.url, project, page_size=2, progress=False).fetch(since=t0)
    assert len(frames.spans) == 7


def test_start_and_end_filters(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime
) -> None:
    spans = ten_spans(t0)
    log_spans(px_client, project, spans)
    source = PhoenixSource(phoenix_server.url, project, progress=False)
    later = source.fetch(since=t0 + timedelta(seconds=6))
    assert list(later.spans["span_id"]) == [s["context"]["span_id"] for s in spans[6:]]
    window = source.fetch(since=t0 + timedelta(seconds=2), until=t0 + timedelta(seconds=5))
    assert list(window.spans["span_id"]) == [s["context"]["span_id"] for s in spans[2:5]]
    assert source.summary.spans == 3
    assert source.summary.since == t0 + timedelta(seconds=2)


def test_aware_datetimes_in_other_zones_mean_the_same_instant(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime
) -> None:
    spans = ten_spans(t0)
    log_spans(px_client, project, spans)
    india = timezone(timedelta(hours=5, minutes=30))
    chile = timezone(timedelta(hours=-3))
    since = (t0 + timedelta(seconds=5)).astimezone(india)
    until = (t0 + timedelta(seconds=8)).astimezone(chile)
    assert since.hour == 5 and until.hour == 21  # written in local wall-clock time
    frames = PhoenixSource(phoenix_server.url, project, progress=False).fetch(since, until)
    assert list(frames.spans["span_id"]) == [s["context"]["span_id"] for s in spans[5:8]]
    assert frames.info.since == t0 + timedelta(seconds=5)
    assert frames.info.since.tzinfo == UTC


def test_naive_and_inverted_windows_are_rejected(phoenix_server: Any, project: str) -> None:
    source = PhoenixSource(phoenix_server.url, project, progress=False)
    with pytest.raises(ConfigError, match=re.escape("Add a zone, e.g. 2026-01-01T00:00:00+00:00")):
        source.fetch(since=datetime(2026, 1, 1))
    with pytest.raises(ConfigError, match="since < until"):
        source.fetch(since=datetime(2026, 1, 2, tzinfo=UTC), until=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(TelemetryError, match="Nothing fetched yet"):
        _ = PhoenixSource(phoenix_server.url, project).summary


def test_unknown_project_gives_empty_frames(phoenix_server: Any, t0: datetime) -> None:
    source = PhoenixSource(phoenix_server.url, "no-such-project-here", progress=False)
    frames = source.fetch(since=t0)
    assert frames.spans.empty and frames.annotations.empty and frames.evals.empty
    assert source.summary.spans == 0


def test_unreachable_server_is_a_telemetry_error(t0: datetime) -> None:
    source = PhoenixSource("http://127.0.0.1:9", "p", progress=False, timeout=2)
    with pytest.raises(TelemetryError, match="Check the URL and that the server is running"):
        source.fetch(since=t0)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_file_source_reads_what_frames_save(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime, tmp_path: Path, suffix: str
) -> None:
    spans = ten_spans(t0)
    log_spans(px_client, project, spans)
    px_client.spans.log_span_annotations(
        span_annotations=[
            {
                "name": "tone",
                "annotator_kind": "LLM",
                "span_id": spans[7]["context"]["span_id"],
                "result": {"label": "ok", "score": 1.0},
                "metadata": {META_CONSTANTS_ID: "abc", META_VARIABLES: {"output": "y"}},
            }
        ],
        sync=True,
    )
    source = PhoenixSource(phoenix_server.url, project, progress=False)
    frames = source.fetch(since=t0)
    path = frames.save(tmp_path / f"export{suffix}")
    loaded = FileSource(path)
    again = loaded.fetch()
    assert list(again.spans["span_id"]) == list(frames.spans["span_id"])
    assert list(again.spans["start_time"]) == list(frames.spans["start_time"])
    assert list(again.spans["attributes"]) == list(frames.spans["attributes"])
    assert again.annotations.iloc[0]["metadata"] == frames.annotations.iloc[0]["metadata"]
    assert again.annotations.iloc[0]["score"] == 1.0
    assert again.info.project == project and again.info.source == "file"
    window = loaded.fetch(since=t0 + timedelta(seconds=7))
    assert len(window.spans) == 3 and len(window.annotations) == 1
    assert loaded.summary.evaluated_spans == 1


def test_file_source_errors_teach(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="No telemetry export"):
        FileSource(tmp_path / "missing.jsonl").fetch()
    other = tmp_path / "other.jsonl"
    other.write_text('{"input": "x", "output": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="not a selfimprove-rl telemetry export"):
        FileSource(other).fetch()
    with pytest.raises(DataError, match=r"ending in \.jsonl or \.parquet"):
        TelemetryFrames.empty().save(tmp_path / "x.csv")


def test_malformed_spans_stored_in_phoenix_are_skipped_and_counted(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime
) -> None:
    from selfimprove_rl.telemetry.instrument import ATTR, constants_id

    from .conftest import TEMPLATE

    constants = {
        "name": "match",
        "template": TEMPLATE,
        "template_format": "string",
        "template_variables": ["output", "reference"],
        "labels": ["correct", "incorrect"],
        "choices": {"correct": 1.0, "incorrect": 0.0},
        "eval_model": "judge",
        "eval_provider": "openai",
        "direction": "maximize",
    }
    cid = constants_id(constants)
    at = [t0 + timedelta(seconds=i) for i in range(10)]
    tool_reply = [
        {
            "message.role": "assistant",
            "message.tool_calls": [
                {"tool_call.function.name": "lookup", "tool_call.function.arguments": "{}"}
            ],
        }
    ]
    spans = {
        "good-1": llm_span(at[0], user="q1", output="a1"),
        "good-2": llm_span(at[1], user="q2", output="a2"),
        "error_status": llm_span(at[2], status="ERROR"),
        "malformed_parameters": llm_span(at[3], extra={"llm.invocation_parameters": "{oops"}),
        "no_output": llm_span(at[4], output=None),
        "tool_call_only": llm_span(at[5], output=None, extra={"llm.output_messages": tool_reply}),
        "no_model": llm_span(at[6], model=None),
        "malformed_input": llm_span(at[7], extra={"llm.input_messages": "not a list"}),
        "missing_evals": llm_span(at[8]),
    }
    evaluator = {
        "name": "match.classify",
        "context": {"trace_id": "ab" * 16, "span_id": "cd" * 8},
        "span_kind": "EVALUATOR",
        "start_time": at[9].isoformat(),
        "end_time": at[9].isoformat(),
        "status_code": "OK",
        "attributes": {
            ATTR + "name": "match",
            ATTR + "constants_id": cid,
            ATTR + "constants": json.dumps(constants),
        },
    }
    log_spans(px_client, project, [*spans.values(), evaluator])
    px_client.spans.log_span_annotations(
        span_annotations=[
            {
                "name": "match",
                "annotator_kind": "LLM",
                "span_id": span["context"]["span_id"],
                "result": {"label": "correct", "score": 1.0},
                "metadata": {
                    META_CONSTANTS_ID: cid,
                    META_VARIABLES: {"output": "a", "reference": "a"},
                },
            }
            for key, span in spans.items()
            if key != "missing_evals"
        ],
        sync=True,
    )
    source = PhoenixSource(phoenix_server.url, project, progress=False)
    source.fetch(since=t0)
    assert source.summary.spans == 9  # the evaluator span is not an LLM span
    checkpoint = source.checkpoint()
    assert sorted(s.input_text for s in checkpoint.samples) == ["q1", "q2"]
    expected = {key: 1 for key in spans if not key.startswith("good")}
    assert checkpoint.provenance.skipped == expected
    assert source.summary.build_skipped == expected
    assert "skipped while building:" in str(source.summary)


def _dsl_attributes(px_client: Any, project: str, t0: datetime) -> dict[str, dict[str, Any]]:
    """Span id → attributes as the Phoenix client's query-DSL dataframe gives them."""
    frame = px_client.spans.get_spans_dataframe(
        project_identifier=project, start_time=t0, limit=1000
    )
    columns = [c for c in frame.columns if c.startswith("attributes.")]
    found = {}
    for span_id, values in zip(
        frame["context.span_id"], frame[columns].itertuples(index=False), strict=True
    ):
        found[span_id] = {
            column[len("attributes.") :]: value
            for column, value in zip(columns, values, strict=True)
            if value is not None and value == value  # drops NaN
        }
    return found


def test_attributes_read_from_the_rest_listing_equal_the_query_dsl_form(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime
) -> None:
    tool_reply = [
        {
            "message.role": "assistant",
            "message.content": "checking",
            "message.tool_calls": [
                {"tool_call.id": "c1", "tool_call.function.name": "lookup"},
                {"tool_call.id": "c2", "tool_call.function.name": "book"},
            ],
        }
    ]
    parts = [
        {"message.role": "system", "message.content": "be brief"},
        {
            "message.role": "user",
            "message.contents": [
                {"message_content.type": "text", "message_content.text": "part one "},
                {"message_content.type": "text", "message_content.text": "part two"},
            ],
        },
    ]
    spans = [
        llm_span(t0, user="plain ☕ ünïcode"),
        llm_span(t0 + timedelta(seconds=1), extra={"llm.output_messages": tool_reply}),
        llm_span(
            t0 + timedelta(seconds=2),
            extra={
                "llm.input_messages": parts,
                "metadata": json.dumps({"phoenix.prompt.version_id": "v7"}),
                "tag.tags": ["alpha", "beta"],
                "llm.token_count.prompt": 12,
                "session.id": "s-1",
                "custom.flag": True,
                "custom.score": 0.25,
            },
        ),
        llm_span(  # metadata stored decoded, as spans sent over OTLP are
            t0 + timedelta(seconds=3),
            extra={"metadata": {"phoenix.prompt.name": "p", "phoenix.prompt.version_id": "v8"}},
        ),
    ]
    log_spans(px_client, project, spans)
    frames = PhoenixSource(phoenix_server.url, project, progress=False).fetch(since=t0)
    dsl = _dsl_attributes(px_client, project, t0)
    assert len(dsl) == 4
    custom = {"custom.flag": True, "custom.score": 0.25}
    for span_id, attributes in zip(
        frames.spans["span_id"], frames.spans["attributes"], strict=True
    ):
        expected = {
            key: list(value) if hasattr(value, "tolist") else value
            for key, value in dsl[span_id].items()
        }
        if "custom" in expected:  # the DSL nests custom attributes; the listing keeps dots
            assert expected.pop("custom") == {"flag": True, "score": 0.25}
            expected.update(custom)
        assert attributes == expected
    assert frames.spans["attributes"].iloc[2]["metadata"] == {"phoenix.prompt.version_id": "v7"}
    assert frames.spans["attributes"].iloc[3]["metadata"]["phoenix.prompt.version_id"] == "v8"


def test_windows_read_in_parallel_give_every_span_once_in_order(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime
) -> None:
    gaps = [0, 1, 2, 3, 3, 3, 500, 501, 502, 3600, 3601, 86_400, 86_400, 86_401]
    spans = [llm_span(t0 + timedelta(seconds=g), user=f"q{i}") for i, g in enumerate(gaps)]
    log_spans(px_client, project, spans)
    px_client.spans.log_span_annotations(
        span_annotations=[
            {
                "name": "tone",
                "annotator_kind": "LLM",
                "span_id": s["context"]["span_id"],
                "result": {"label": "ok", "score": 1.0},
            }
            for s in spans
        ],
        sync=True,
    )
    expected = [s["context"]["span_id"] for s in spans]
    for workers in (1, 3):
        source = PhoenixSource(
            phoenix_server.url, project, page_size=2, workers=workers, progress=False
        )
        frames = source.fetch(since=t0)
        assert list(frames.spans["span_id"]) == expected
        assert sorted(frames.annotations["span_id"]) == sorted(expected)
        assert source.summary.pages >= len(spans) // 2
    bounded = PhoenixSource(phoenix_server.url, project, page_size=2, workers=3, progress=False)
    window = bounded.fetch(since=t0 + timedelta(seconds=3), until=t0 + timedelta(seconds=3601))
    assert list(window.spans["span_id"]) == expected[3:10]


def test_workers_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=re.escape("Expects workers >= 1, got 0.")):
        PhoenixSource("http://127.0.0.1:9", "p", workers=0)


def test_roots_adds_each_traces_root_span_once(
    phoenix_server: Any, px_client: Any, project: str, t0: datetime
) -> None:
    root = llm_span(t0, user="root")
    root.update(name="pipeline", span_kind="CHAIN")
    root["attributes"] = {"openinference.span.kind": "CHAIN", "input.value": "hi"}
    child = llm_span(t0 + timedelta(seconds=1), user="child")
    child["context"]["trace_id"] = root["context"]["trace_id"]
    child["parent_id"] = root["context"]["span_id"]
    lone = llm_span(t0 + timedelta(seconds=2), user="an LLM call that is its own root")
    log_spans(px_client, project, [root, child, lone])
    plain = PhoenixSource(phoenix_server.url, project, progress=False).fetch(since=t0)
    assert list(plain.spans["span_id"]) == [child["context"]["span_id"], lone["context"]["span_id"]]
    source = PhoenixSource(phoenix_server.url, project, roots=True, progress=False)
    frames = source.fetch(since=t0)
    assert list(frames.spans["span_id"]) == [s["context"]["span_id"] for s in (root, child, lone)]
    assert frames.spans["attributes"].iloc[0]["input.value"] == "hi"
    parents = frames.spans["parent_id"]
    assert parents.isna().tolist() == [True, False, True]
    assert parents.iloc[1] == root["context"]["span_id"]
