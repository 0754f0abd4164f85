"""Program checkpoints from telemetry frames built in memory (the Phoenix path is in
test_program_phoenix.py)."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from selfimprove_rl.errors import NoUsableSamplesError
from selfimprove_rl.program import MessageTemplate, NodeMatch, Program, ProgramNode
from selfimprove_rl.telemetry.frames import FetchInfo, TelemetryFrames, conform
from selfimprove_rl.telemetry.instrument import META_CONSTANTS_ID, META_VARIABLES
from selfimprove_rl.telemetry.program_builder import build_program_checkpoint

from .conftest import llm_span
from .test_builder import CID, CONSTANTS

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROUTER, RESPONDER = "Label it.", "Answer the label."


def trace(
    text: str, label: str, reply: str, i: int, *, responder_user: str | None = None
) -> list[dict[str, Any]]:
    trace_id = secrets.token_hex(16)
    root = {
        "context": {"trace_id": trace_id, "span_id": secrets.token_hex(8)},
        "name": "pipeline",
        "span_kind": "CHAIN",
        "start_time": (T0 + timedelta(seconds=i)).isoformat(),
        "end_time": (T0 + timedelta(seconds=i, milliseconds=9)).isoformat(),
        "status_code": "OK",
        "attributes": {"openinference.span.kind": "CHAIN"},
        "parent_id": None,
    }
    first = llm_span(
        T0 + timedelta(seconds=i, milliseconds=1), system=ROUTER, user=text, output=label
    )
    second = llm_span(
        T0 + timedelta(seconds=i, milliseconds=5),
        system=RESPONDER,
        user=responder_user if responder_user is not None else f"Label: {label}",
        output=reply,
    )
    for span in (first, second):
        span["context"]["trace_id"] = trace_id
        span["parent_id"] = root["context"]["span_id"]
    return [root, first, second]


def row(span: dict[str, Any]) -> dict[str, Any]:
    return {
        "span_id": span["context"]["span_id"],
        "trace_id": span["context"]["trace_id"],
        "parent_id": span.get("parent_id"),
        "name": span["name"],
        "span_kind": span["span_kind"],
        "start_time": span["start_time"],
        "end_time": span["end_time"],
        "status_code": span["status_code"],
        "status_message": "",
        "attributes": span["attributes"],
    }


def note(span: dict[str, Any], output: str, reference: str, *, correct: bool) -> dict[str, Any]:
    return {
        "span_id": span["context"]["span_id"],
        "name": "match",
        "label": "correct" if correct else "incorrect",
        "score": 1.0 if correct else 0.0,
        "explanation": "",
        "annotator_kind": "LLM",
        "identifier": "",
        "metadata": {
            META_CONSTANTS_ID: CID,
            META_VARIABLES: {"output": output, "reference": reference},
        },
    }


def frames(spans: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> TelemetryFrames:
    return TelemetryFrames(
        conform(pd.DataFrame([row(s) for s in spans]), "spans"),
        conform(pd.DataFrame(annotations), "annotations"),
        conform(
            pd.DataFrame([{"constants_id": CID, "name": "match", "constants": CONSTANTS}]), "evals"
        ),
        FetchInfo(source="phoenix", endpoint="http://px", project="p", since=T0),
    )


DATA = [("refund please", "billing", "We refund."), ("parcel late", "shipping", "We ship.")] * 3


def test_calls_are_named_by_position_and_templates_inferred_literally() -> None:
    spans, notes = [], []
    for i, (text, label, reply) in enumerate(DATA):
        root, first, second = trace(text, label, reply, i)
        spans += [root, first, second]
        notes.append(note(root, reply, reply, correct=True))
    checkpoint = build_program_checkpoint(frames(spans, notes))
    program = checkpoint.program
    assert program is not None and program.order == ("call_1", "call_2")
    assert program.nodes[1].messages == (MessageTemplate(content="Label: {{nodes.call_1.output}}"),)
    assert checkpoint.node_actions["call_1"].system_prompt == ROUTER
    assert [(c.name, c.node) for c in checkpoint.eval_constants] == [("match", None)]
    assert checkpoint.samples[0].reference in {"We refund.", "We ship."}
    assert checkpoint.provenance.skipped == {}


def test_incomplete_traces_and_other_templates_are_skipped_and_counted() -> None:
    spans, notes = [], []
    for i, (text, label, reply) in enumerate(DATA):
        root, first, second = trace(text, label, reply, i)
        spans += [root, first] if i == 0 else [root, first, second]
        notes.append(note(root, reply, reply, correct=True))
    root, first, second = trace("odd one", "billing", "We refund.", 9, responder_user="Labels!")
    spans += [root, first, second]
    notes.append(note(root, "We refund.", "We refund.", correct=True))
    checkpoint = build_program_checkpoint(frames(spans, notes))
    assert len(checkpoint.samples) == len(DATA) - 1
    assert checkpoint.provenance.skipped == {"incomplete_trace": 1, "other_template": 1}


def test_node_evals_and_the_output_nodes_evals_as_end_to_end() -> None:
    program = Program(
        nodes=(
            ProgramNode(name="router", match=NodeMatch(system_prompt=ROUTER)),
            ProgramNode(
                name="responder",
                match=NodeMatch(system_prompt=RESPONDER),
                messages=(MessageTemplate(content="Label: {{nodes.router.output}}"),),
            ),
        )
    )
    spans, notes = [], []
    for i, (text, label, reply) in enumerate(DATA):
        root, first, second = trace(text, label, reply, i)
        spans += [root, first, second]
        notes.append(note(second, reply, reply, correct=True))  # no root evals: output node's
    checkpoint = build_program_checkpoint(frames(spans, notes), program=program)
    assert checkpoint.program == program
    assert [(c.name, c.node) for c in checkpoint.eval_constants] == [("match", None)]
    with pytest.raises(NoUsableSamplesError, match=re.escape("None of 1 traces")):
        root, first, _ = trace("x", "y", "z", 0)
        build_program_checkpoint(frames([root, first], []), program=program)
