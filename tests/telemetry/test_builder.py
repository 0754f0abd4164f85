"""build_checkpoint on frames made in memory: every skip reason, majority prompt, eval choice."""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfimprove_rl.checkpoint import Checkpoint
from selfimprove_rl.errors import ConfigError, DataError, NoUsableSamplesError
from selfimprove_rl.telemetry.builder import build_checkpoint
from selfimprove_rl.telemetry.frames import FetchInfo, TelemetryFrames, conform
from selfimprove_rl.telemetry.instrument import (
    META_CONSTANTS_ID,
    META_VARIABLES,
    constants_id,
)
from selfimprove_rl.telemetry.source import FileSource

from .conftest import TEMPLATE, llm_span

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONSTANTS = {
    "name": "match",
    "kind": "classifier",
    "template": TEMPLATE,
    "template_format": "string",
    "template_variables": ["output", "reference"],
    "labels": ["correct", "incorrect"],
    "choices": {"correct": 1.0, "incorrect": 0.0},
    "label_descriptions": {},
    "eval_model": "judge-1",
    "eval_provider": "openai",
    "direction": "maximize",
    "include_explanation": True,
    "eval_parameters": {"temperature": 0.0},
}
CID = constants_id(CONSTANTS)


def row(span: dict[str, Any]) -> dict[str, Any]:
    return {
        "span_id": span["context"]["span_id"],
        "trace_id": span["context"]["trace_id"],
        "parent_id": None,
        "name": span["name"],
        "span_kind": "LLM",
        "start_time": span["start_time"],
        "end_time": span["end_time"],
        "status_code": span["status_code"],
        "status_message": "",
        "attributes": span["attributes"],
    }


def annotation(
    span: dict[str, Any],
    label: str | None = "correct",
    score: float | None = 1.0,
    *,
    name: str = "match",
    cid: str | None = CID,
    output: str | None = None,
) -> dict[str, Any]:
    messages = span["attributes"].get("llm.output_messages") or [{}]
    out = output if output is not None else str(messages[0].get("message.content", ""))
    metadata: dict[str, Any] = {}
    if cid is not None:
        metadata = {
            META_CONSTANTS_ID: cid,
            META_VARIABLES: {"output": out, "reference": "gold reply"},
        }
    return {
        "span_id": span["context"]["span_id"],
        "name": name,
        "label": label,
        "score": score,
        "explanation": f"because {label}",
        "annotator_kind": "LLM",
        "identifier": "",
        "metadata": metadata,
    }


def frames_of(
    spans: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    evals: list[dict[str, Any]] | None = None,
) -> TelemetryFrames:
    eval_rows = (
        evals
        if evals is not None
        else [{"constants_id": CID, "name": "match", "constants": CONSTANTS}]
    )
    return TelemetryFrames(
        conform(pd.DataFrame([row(s) for s in spans]), "spans"),
        conform(pd.DataFrame(annotations), "annotations"),
        conform(pd.DataFrame(eval_rows), "evals"),
        FetchInfo(source="phoenix", endpoint="http://px", project="p", since=T0),
    )


def at(i: int) -> datetime:
    return T0 + timedelta(seconds=i)


def test_usable_rows_become_samples_with_action_and_constants() -> None:
    spans = [llm_span(at(i), user=f"q{i}", output=f"a{i}") for i in range(3)]
    spans[0]["attributes"]["llm.invocation_parameters"] = json.dumps(
        {"model": "sim-large", "temperature": 0.2, "seed": 7, "stop": ["\n"]}
    )
    spans[1]["attributes"]["llm.invocation_parameters"] = spans[0]["attributes"][
        "llm.invocation_parameters"
    ]
    checkpoint = build_checkpoint(frames_of(spans, [annotation(s) for s in spans]))
    assert [s.chat_history for s in checkpoint.samples] == [
        [{"role": "user", "content": f"q{i}"}] for i in range(3)
    ]
    first = checkpoint.samples[0]
    assert first.output_generation == {"role": "assistant", "content": "a0"}
    assert first.eval_scores == {"match": 1.0}
    assert first.eval_labels == {"match": "correct"}
    assert first.eval_reasoning == {"match": "because correct"}
    assert first.eval_variables == {"match": {"output": "a0", "reference": "gold reply"}}
    assert first.reference == "gold reply"
    assert first.span_id == spans[0]["context"]["span_id"] == first.sample_id
    assert first.timestamp == at(0)
    action = checkpoint.action
    assert (action.system_prompt, action.model) == ("be brief", "sim-large")
    assert (action.temperature, action.seed, action.extra_parameters) == (0.2, 7, {"stop": ["\n"]})
    (constants,) = checkpoint.eval_constants
    assert constants.template == TEMPLATE
    assert constants.choices == {"correct": 1.0, "incorrect": 0.0}
    assert constants.output_variable == "output"
    assert (constants.eval_model, constants.eval_provider) == ("judge-1", "openai")
    assert constants.eval_parameters == {"temperature": 0.0}
    assert checkpoint.provenance.source == "phoenix"
    assert checkpoint.provenance.skipped == {}


def test_each_unusable_row_is_skipped_and_counted_by_reason() -> None:
    good = [llm_span(at(i), user=f"q{i}") for i in range(3)]
    tool_only = llm_span(at(10))
    tool_only["attributes"]["llm.output_messages"] = [
        {
            "message.role": "assistant",
            "message.tool_calls": [
                {"tool_call.function.name": "lookup", "tool_call.function.arguments": "{}"}
            ],
        }
    ]
    bad = {
        "error_status": llm_span(at(11), status="ERROR"),
        "malformed_input": llm_span(at(12), extra={"llm.input_messages": "not json"}),
        "no_chat_history": llm_span(
            at(13),
            extra={"llm.input_messages": [{"message.role": "system", "message.content": "s"}]},
        ),
        "malformed_output": llm_span(at(14), extra={"llm.output_messages": [{"x": 1}]}),
        "no_output": llm_span(at(15), output=None),
        "tool_call_only": tool_only,
        "malformed_parameters": llm_span(at(16), extra={"llm.invocation_parameters": "{bad"}),
        "no_model": llm_span(at(17), model=None),
        "other_system_prompt": llm_span(at(18), system="another prompt"),
        "other_model": llm_span(at(19), model="sim-small"),
        "missing_evals": llm_span(at(20)),
        "unscored_eval": llm_span(at(21)),
        "other_eval_constants": llm_span(at(22)),
    }
    annotations = [annotation(s) for s in good]
    annotations += [annotation(s) for k, s in bad.items() if k not in ("missing_evals",)]
    annotations = [
        a
        for a in annotations
        if a["span_id"] != bad["unscored_eval"]["context"]["span_id"]
        and a["span_id"] != bad["other_eval_constants"]["context"]["span_id"]
    ]
    annotations.append(annotation(bad["unscored_eval"], label="maybe", score=None))
    annotations.append(annotation(bad["other_eval_constants"], cid="0" * 16))
    checkpoint = build_checkpoint(frames_of(good + list(bad.values()), annotations))
    assert len(checkpoint.samples) == 3
    assert checkpoint.provenance.skipped == dict.fromkeys(sorted(bad), 1)
    assert "3 samples from 16 LLM spans (13 skipped)" in (checkpoint.provenance.description or "")


def test_majority_prompt_wins_and_others_are_kept_when_asked() -> None:
    spans = [llm_span(at(i), system="A") for i in range(3)] + [
        llm_span(at(i + 3), system="B") for i in range(2)
    ]
    frames = frames_of(spans, [annotation(s) for s in spans])
    single = build_checkpoint(frames)
    assert single.action.system_prompt == "A"
    assert single.provenance.skipped == {"other_system_prompt": 2}
    every = build_checkpoint(frames, expect_single_prompt=False)
    assert len(every.samples) == 5
    assert [s.metadata.get("system_prompt") for s in every.samples] == [None] * 3 + ["B"] * 2


def test_label_without_score_maps_through_the_rails() -> None:
    spans = [llm_span(at(0))]
    checkpoint = build_checkpoint(frames_of(spans, [annotation(spans[0], "incorrect", None)]))
    assert checkpoint.samples[0].eval_scores == {"match": 0.0}


def test_output_variable_is_inferred_from_recorded_values() -> None:
    constants = {
        **CONSTANTS,
        "template": "R: {reply}\nG: {gold}",
        "template_variables": ["gold", "reply"],
    }
    cid = constants_id(constants)
    spans = [llm_span(at(i), output=f"out {i}") for i in range(2)]
    annotations = []
    for s in spans:
        a = annotation(s, cid=cid)
        a["metadata"][META_VARIABLES] = {
            "reply": s["attributes"]["llm.output_messages"][0]["message.content"],
            "gold": "g",
        }
        annotations.append(a)
    evals = [{"constants_id": cid, "name": "match", "constants": constants}]
    checkpoint = build_checkpoint(frames_of(spans, annotations, evals))
    assert checkpoint.eval_constants[0].output_variable == "reply"


def test_eval_that_cannot_be_rerun_is_dropped_and_counted() -> None:
    constants = {**CONSTANTS, "template": "Judge {text}", "template_variables": ["text"]}
    cid = constants_id(constants)
    spans = [llm_span(at(0))]
    a = annotation(spans[0], cid=cid)
    a["metadata"][META_VARIABLES] = {"text": "unrelated"}
    evals = [{"constants_id": cid, "name": "match", "constants": constants}]
    with pytest.warns(UserWarning, match="output_variables"):
        with pytest.raises(NoUsableSamplesError) as caught:
            build_checkpoint(frames_of(spans, [a], evals))
    assert "missing_evals: 1" in str(caught.value)
    checkpoint = build_checkpoint(frames_of(spans, [a], evals), output_variables={"match": "text"})
    assert checkpoint.eval_constants[0].output_variable == "text"


def test_rails_without_scores_need_label_scores() -> None:
    constants = {**CONSTANTS, "choices": None}
    cid = constants_id(constants)
    spans = [llm_span(at(0))]
    evals = [{"constants_id": cid, "name": "match", "constants": constants}]
    frames = frames_of(spans, [annotation(spans[0], score=None, cid=cid)], evals)
    with pytest.warns(UserWarning, match="label_scores"), pytest.raises(NoUsableSamplesError):
        build_checkpoint(frames)
    checkpoint = build_checkpoint(frames, label_scores={"match": {"correct": 1, "incorrect": 0}})
    assert checkpoint.samples[0].eval_scores == {"match": 1.0}


def test_nothing_usable_raises_with_reasons() -> None:
    spans = [llm_span(at(0), status="ERROR"), llm_span(at(1))]
    with pytest.raises(NoUsableSamplesError, match=re.escape("None of 2 LLM spans is usable")):
        build_checkpoint(frames_of(spans, [], evals=[]))
    with pytest.raises(NoUsableSamplesError, match="instrument_evals"):
        build_checkpoint(frames_of(spans, [], evals=[]))
    with pytest.raises(NoUsableSamplesError, match="No LLM spans in project 'p'"):
        build_checkpoint(frames_of([], []))


def test_unknown_eval_name_suggests_the_closest() -> None:
    spans = [llm_span(at(0))]
    with pytest.raises(ConfigError, match="Did you mean 'match'"):
        build_checkpoint(frames_of(spans, [annotation(spans[0])]), evals=["matc"])


def test_phoenix_prompt_version_is_recorded_in_provenance() -> None:
    metadata = {"phoenix.prompt.name": "bot", "phoenix.prompt.version_id": "UHJvbXB0VmVyc2lvbjox"}
    spans = [
        llm_span(
            at(i), extra={"metadata": json.dumps(metadata), "llm.prompt_template.version": "v"}
        )
        for i in range(2)
    ]
    checkpoint = build_checkpoint(frames_of(spans, [annotation(s) for s in spans]))
    assert checkpoint.provenance.phoenix_prompt == {
        "name": "bot",
        "version_id": "UHJvbXB0VmVyc2lvbjox",
    }
    bare = [llm_span(at(0), extra={"prompt.id": "p-1", "prompt.vendor": "phoenix"})]
    checkpoint = build_checkpoint(frames_of(bare, [annotation(bare[0])]))
    assert checkpoint.provenance.phoenix_prompt == {"version_id": "p-1", "vendor": "phoenix"}


def test_output_value_is_the_fallback_for_output_messages() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "from body"}}]}
    spans = [llm_span(at(0), output=None, extra={"output.value": json.dumps(body)})]
    checkpoint = build_checkpoint(frames_of(spans, [annotation(spans[0], output="from body")]))
    assert checkpoint.samples[0].output_text == "from body"


def test_low_coverage_eval_is_dropped_not_the_rows() -> None:
    other = {**CONSTANTS, "name": "tone"}
    cid = constants_id(other)
    spans = [llm_span(at(i)) for i in range(4)]
    annotations = [annotation(s) for s in spans] + [annotation(spans[0], name="tone", cid=cid)]
    evals = [
        {"constants_id": CID, "name": "match", "constants": CONSTANTS},
        {"constants_id": cid, "name": "tone", "constants": other},
    ]
    checkpoint = build_checkpoint(frames_of(spans, annotations, evals))
    assert [c.name for c in checkpoint.eval_constants] == ["match"]
    assert len(checkpoint.samples) == 4
    assert checkpoint.provenance.skipped == {"dropped_eval:tone:low_coverage": 1}


# --- junk never escapes: counted skips or a typed error ---------------------------------------


def object_frames(
    spans: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    evals: list[dict[str, Any]] | None = None,
) -> TelemetryFrames:
    """Frames whose text columns are objects (Arrow strings cannot hold a lone surrogate)."""
    eval_rows = (
        evals
        if evals is not None
        else [{"constants_id": CID, "name": "match", "constants": CONSTANTS}]
    )
    return TelemetryFrames(
        conform(pd.DataFrame([row(s) for s in spans], dtype=object), "spans"),
        conform(pd.DataFrame(annotations, dtype=object), "annotations"),
        conform(pd.DataFrame(eval_rows, dtype=object), "evals"),
        FetchInfo(source="file", project="p"),
    )


def test_junk_rows_are_skipped_and_counted_by_reason() -> None:
    good = [llm_span(at(i), user=f"q{i}") for i in range(6)]
    duplicate = json.loads(json.dumps(good[0]))
    duplicate["attributes"]["llm.output_messages"][0]["message.content"] = "another reply"
    bad = {
        "malformed_span_id": llm_span(at(10)),
        "malformed_parameters": [
            llm_span(at(11), extra={"llm.invocation_parameters": '{"temperature": NaN}'}),
            llm_span(at(12), parameters={"temperature": "hot"}),
            llm_span(at(13), parameters={"seed": 1.5}),
            llm_span(at(14), parameters={"logit_bias": {"1": float("inf")}}),
            llm_span(at(15), parameters={"max_tokens": 10**40}),
        ],
        "invalid_text": [llm_span(at(16), user="caf\ud800"), llm_span(at(17), model="m\udfff")],
        "malformed_eval_result": [llm_span(at(i)) for i in range(18, 22)],
    }
    bad["malformed_span_id"]["context"]["span_id"] = None
    results = bad["malformed_eval_result"]
    annotations = [annotation(s) for s in good] + [
        annotation(results[0], label="correct", score="0.9"),  # type: ignore[arg-type]
        annotation(results[1], label=5, score=None),  # type: ignore[arg-type]
        annotation(results[2], score=True),  # type: ignore[arg-type]
    ]
    note = annotation(results[3])
    note["metadata"][META_VARIABLES] = {"output": 5}
    annotations.append(note)
    spans = [*good, duplicate, bad["malformed_span_id"], *bad["malformed_parameters"]]
    spans += [*bad["invalid_text"], *results]
    annotations += [annotation(s) for s in bad["malformed_parameters"] + bad["invalid_text"]]
    checkpoint = build_checkpoint(object_frames(spans, annotations))
    assert [s.input_text for s in checkpoint.samples] == [f"q{i}" for i in range(6)]
    assert checkpoint.samples[0].output_text == "hi there"  # the first row of a span id wins
    assert checkpoint.provenance.skipped == {
        "duplicate_span": 1,
        "invalid_text": 2,
        "malformed_eval_result": 4,
        "malformed_parameters": 5,
        "malformed_span_id": 1,
    }
    again = checkpoint.save(Path(tempfile.mkdtemp()) / "c.json")
    assert Checkpoint.load(again) == checkpoint


def test_a_start_time_that_is_not_a_time_is_counted_not_raised() -> None:
    spans = [llm_span(at(i)) for i in range(3)]
    frames = frames_of(spans, [annotation(s) for s in spans])
    frames.spans["start_time"] = frames.spans["start_time"].astype(object)
    frames.spans.loc[1, "start_time"] = "yesterday-ish"
    frames.spans.loc[2, "start_time"] = None
    checkpoint = build_checkpoint(frames)
    assert checkpoint.provenance.skipped == {"malformed_start_time": 1}
    assert [s.timestamp for s in checkpoint.samples] == [at(0), None]


def test_conform_counts_or_names_times_it_cannot_read() -> None:
    spans = [row(llm_span(at(i))) for i in range(4)]
    spans[1]["start_time"] = "not a time"
    spans[2]["start_time"] = 12345
    spans[3]["end_time"] = None
    frame = pd.DataFrame(spans, dtype=object)
    message = "spans rows [1, 2]: start_time 'not a time', 12345 is not an ISO 8601 time"
    with pytest.raises(DataError, match=re.escape(message)):
        conform(frame, "spans")
    skipped: Counter[str] = Counter()
    kept = conform(frame, "spans", skipped=skipped)
    assert skipped == {"malformed_start_time": 2}
    assert list(kept["span_id"]) == [spans[0]["span_id"], spans[3]["span_id"]]
    assert kept["end_time"].isna().tolist() == [False, True]


def test_an_export_with_bad_rows_loads_and_counts_them(tmp_path: Path) -> None:
    spans = [llm_span(at(i)) for i in range(3)]
    path = frames_of(spans, [annotation(s) for s in spans]).save(tmp_path / "f.jsonl")
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace(at(0).isoformat(), "2026-13-45T99:00:00+00:00")
    lines[2] = lines[2].replace(spans[1]["context"]["span_id"], "\\ud800")
    path.write_text("\n".join(lines) + "\n")
    frames = FileSource(path).fetch()
    assert frames.summary.skipped == {"malformed_start_time": 1}
    checkpoint = build_checkpoint(frames)
    assert len(checkpoint.samples) == 1
    assert checkpoint.provenance.skipped == {"invalid_text": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not text", "is not UTF-8 text"),
        (b'{"kind": "selfimprove-telemetry", "schema_version": 1}\n[1, 2]\n', "is a JSON list"),
        (b"[" * 100_000, "is not valid JSON"),
        (b'{"kind": "selfimprove-telemetry", "schema_version": 1, "info": 5}\n', "malformed"),
        (b'{"kind": "selfimprove-telemetry", "schema_version": 1, "x": "\\ud800"}\n', "not valid"),
    ],
)
def test_a_broken_export_is_a_data_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        TelemetryFrames.load(path)


@pytest.mark.parametrize(
    "change",
    [
        {"choices": "abc"},
        {"choices": {"correct": float("nan"), "incorrect": 0.0}},
        {"choices": {"correct": "high"}},
        {"template_variables": 5},
        {"template_variables": [1, 2]},
        {"template": 5},
        {"direction": "up"},
        {"template_format": "messages"},
        {"template_format": "yaml"},
        {"eval_parameters": {"temperature": float("nan")}},
        {"label_descriptions": ["correct"]},
        {"include_explanation": "sometimes"},
    ],
)
def test_malformed_recorded_constants_drop_the_eval(change: dict[str, Any]) -> None:
    constants = {**CONSTANTS, **change}
    spans = [llm_span(at(i)) for i in range(2)]
    evals = [{"constants_id": CID, "name": "match", "constants": constants}]
    with (
        pytest.warns(UserWarning, match="malformed"),
        pytest.raises(NoUsableSamplesError) as caught,
    ):
        build_checkpoint(object_frames(spans, [annotation(s) for s in spans], evals))
    assert "dropped_eval:match:malformed_constants: 2" in str(caught.value)


@pytest.mark.parametrize(
    "record",
    [
        {"constants_id": CID, "name": "match", "constants": "not a mapping"},
        {"constants_id": CID, "name": None, "constants": CONSTANTS},
        {"constants_id": 7, "name": "match", "constants": CONSTANTS},
        {"constants_id": CID, "name": "match", "constants": {1: "x", **CONSTANTS}},
    ],
)
def test_unusable_constants_records_are_ignored(record: dict[str, Any]) -> None:
    spans = [llm_span(at(0))]
    with pytest.raises(NoUsableSamplesError, match="No eval constants were recorded"):
        build_checkpoint(object_frames(spans, [annotation(spans[0])], [record]))


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    st.text(alphabet=st.characters(codec=None), max_size=5),
    st.sampled_from(["{not json", "[]", '{"temperature": NaN}', "2026-99-99", b"bytes"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.floats() | st.text(max_size=3), max_size=2),
)
span_keys = st.sampled_from(["span_id", "trace_id", "start_time", "status_code", "attributes"])
attribute_keys = st.sampled_from(
    ["llm.input_messages", "llm.output_messages", "llm.invocation_parameters", "llm.model_name"]
)
note_keys = st.sampled_from(["span_id", "name", "label", "score", "explanation", "metadata"])
mutation = st.one_of(
    st.tuples(st.just("span"), span_keys, junk),
    st.tuples(st.just("attribute"), attribute_keys, junk),
    st.tuples(st.just("note"), note_keys, junk),
    st.tuples(st.just("constants"), st.sampled_from(sorted(CONSTANTS)), junk),
    st.tuples(st.just("duplicate"), st.just(""), st.none()),
)


@settings(max_examples=60, deadline=None)
@given(mutations=st.lists(mutation, min_size=1, max_size=4), target=st.integers(0, 2))
def test_any_frames_give_a_checkpoint_or_a_typed_error(
    mutations: list[tuple[str, str, Any]], target: int
) -> None:
    spans = [row(llm_span(at(i), user=f"q{i}")) for i in range(3)]
    notes = [annotation({"context": {"span_id": s["span_id"]}, **s}) for s in spans]
    constants = json.loads(json.dumps(CONSTANTS))
    for where, key, value in mutations:
        if where == "span":
            spans[target][key] = value
        elif where == "attribute" and isinstance(spans[target]["attributes"], dict):
            spans[target]["attributes"][key] = value
        elif where == "note":
            notes[target][key] = value
        elif where == "constants":
            constants[key] = value
        elif where == "duplicate":
            spans.append(dict(spans[target]))
    evals = [{"constants_id": CID, "name": "match", "constants": constants}]
    skipped: Counter[str] = Counter()
    try:
        frames = TelemetryFrames(
            conform(pd.DataFrame(spans, dtype=object), "spans", skipped=skipped),
            conform(pd.DataFrame(notes, dtype=object), "annotations"),
            conform(pd.DataFrame(evals, dtype=object), "evals"),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = build_checkpoint(frames)
    except (NoUsableSamplesError, DataError):
        return
    with tempfile.TemporaryDirectory() as folder:
        assert Checkpoint.load(checkpoint.save(Path(folder) / "c.json")) == checkpoint
