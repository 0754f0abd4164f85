"""A real two-call app (openai SDK + OpenInference, simulated model) traced to a real Phoenix:
nested spans → a program checkpoint → a run that publishes one prompt version per node."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from selfimprove_rl.config import parse_config
from selfimprove_rl.program_state import ProgramState
from selfimprove_rl.registry import Registry
from selfimprove_rl.runner import run_experiment
from selfimprove_rl.telemetry import (
    PhoenixPrompts,
    PhoenixSource,
    build_program_checkpoint,
    instrument_evals,
    load_version,
    phoenix_integrations,
    uninstrument_evals,
)

from .conftest import TEMPLATE, wait_until

pytestmark = pytest.mark.phoenix

ROUTER = "You route customer support messages.\n\n## SOP\nReply with the label of the topic."
RESPONDER = "You answer customers from their topic label.\n\n## SOP\nAnswer helpfully."
REPLIES = {
    "billing": "Our billing team will review the charge.",
    "shipping": "We will check the delivery with the carrier.",
    "account": "Use the reset link to get back into your account.",
}
TRAFFIC = [
    ("I want a refund for this", "billing"),
    ("You charged my card twice", "billing"),
    ("The refund never arrived", "billing"),
    ("Why was my card charged again", "billing"),
    ("My parcel is late", "shipping"),
    ("Where is my parcel now", "shipping"),
    ("The delivery went to the wrong door", "shipping"),
    ("No delivery yet after a week", "shipping"),
    ("I forgot my password", "account"),
    ("The password reset fails", "account"),
    ("I cannot login anymore", "account"),
    ("Login says my email is unknown", "account"),
    ("A refund for the late parcel please", "billing"),
    ("Change the password on my account", "account"),
    ("The parcel box was crushed", "shipping"),
]


PHOENIX = phoenix_integrations()  # the wiring the CLI passes: Phoenix data and callbacks


def run_app(provider: Any) -> None:
    """The application: a router call, then a responder call on its label, under one root."""
    from openinference.instrumentation import using_metadata

    from selfimprove_rl.backend import Backend

    tracer = provider.get_tracer("support-app")
    client = Backend().sync_client()
    for text, _ in TRAFFIC:
        attributes = {"openinference.span.kind": "CHAIN", "input.value": text}
        with tracer.start_as_current_span("support-pipeline", attributes=attributes) as root:
            with using_metadata({"node": "router"}):
                label = client.chat.completions.create(
                    model="sim-large",
                    messages=[
                        {"role": "system", "content": ROUTER},
                        {"role": "user", "content": text},
                    ],
                    temperature=0.0,
                )
            with using_metadata({"node": "responder"}):
                reply = client.chat.completions.create(
                    model="sim-large",
                    messages=[
                        {"role": "system", "content": RESPONDER},
                        {"role": "user", "content": label.choices[0].message.content or ""},
                    ],
                    temperature=0.0,
                )
            root.set_attribute("output.value", reply.choices[0].message.content or "")


def evaluate(px_client: Any, project: str, provider: Any, judge_llm: Any) -> None:
    """End-to-end evals on the root spans, label evals on the router spans (recorded)."""
    import pandas as pd
    from phoenix.evals import create_classifier, evaluate_dataframe

    holder: dict[str, Any] = {}

    def ready() -> bool:
        holder["spans"] = px_client.spans.get_spans_dataframe(project_identifier=project)
        return len(holder["spans"]) >= 3 * len(TRAFFIC)

    wait_until(ready, what="the app's spans")
    spans = holder["spans"].reset_index(drop=True)
    label_of = dict(TRAFFIC)
    roots = spans[spans["parent_id"].isna()]
    routers = spans[spans["attributes.metadata"].map(lambda m: _node(m) == "router")]
    by_trace = {
        row["context.trace_id"]: row["attributes.input.value"] for _, row in roots.iterrows()
    }
    end_to_end = pd.DataFrame(
        {
            "context.span_id": roots["context.span_id"],
            "output": roots["attributes.output.value"],
            "reference": [REPLIES[label_of[t]] for t in roots["attributes.input.value"]],
        }
    )
    labels = pd.DataFrame(
        {
            "context.span_id": routers["context.span_id"],
            "output": [m[0]["message.content"] for m in routers["attributes.llm.output_messages"]],
            "reference": [label_of[by_trace[t]] for t in routers["context.trace_id"]],
        }
    )
    recorder = instrument_evals(provider)
    try:
        for name, rows in (("resolved", end_to_end), ("label_correct", labels)):
            classifier = create_classifier(
                name=name,
                prompt_template=TEMPLATE,
                llm=judge_llm,
                choices={"correct": 1.0, "incorrect": 0.0},
            )
            evaluate_dataframe(dataframe=rows, evaluators=[classifier], hide_tqdm_bar=True)
        assert recorder.flush()
    finally:
        uninstrument_evals()


def _node(metadata: Any) -> str | None:
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return metadata.get("node") if isinstance(metadata, dict) else None


def test_program_from_nested_spans_and_one_prompt_per_node(
    phoenix_server: Any,
    px_client: Any,
    project: str,
    tracing: Any,
    judge_llm: Any,
    tmp_path: Path,
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    run_app(tracing)
    evaluate(px_client, project, tracing, judge_llm)

    source = PhoenixSource(phoenix_server.url, project, roots=True, progress=False)
    frames = source.fetch(since=start)
    checkpoint = build_program_checkpoint(frames)
    assert checkpoint.program is not None
    assert checkpoint.program.order == ("router", "responder")
    router, responder = checkpoint.program.nodes
    assert router.messages is None  # the first call sends the conversation as logged
    assert responder.messages is not None
    assert [m.content for m in responder.messages] == ["{{nodes.router.output}}"]
    assert checkpoint.node_actions["router"].system_prompt == ROUTER
    assert checkpoint.node_actions["responder"].system_prompt == RESPONDER
    assert checkpoint.action == checkpoint.node_actions["responder"]
    assert len(checkpoint.samples) == len(TRAFFIC)
    nodes = {c.name: c.node for c in checkpoint.eval_constants}
    assert nodes == {"resolved": None, "label_correct": "router"}
    sample = next(s for s in checkpoint.samples if s.input_text == TRAFFIC[0][0])
    assert sample.reference == REPLIES["billing"]
    assert sample.node_references == {"router": "billing"}
    assert sample.eval_scores == {"resolved": 0.0, "label_correct": 0.0}
    assert set(sample.node_outputs) == {"router", "responder"}
    assert sample.trace_id is not None and sample.span_id in set(frames.spans["span_id"])
    assert checkpoint.provenance.skipped == {}

    path = checkpoint.save(tmp_path / "checkpoint.json")
    prompt = f"support-{project}"[:50]
    config = parse_config(
        {
            "name": "program-phoenix",
            "env_id": "selfimprove_rl/ProgramEnv-v0",
            "data": {"kind": "checkpoint", "path": str(path)},
            "policy": {"name": "program_coach", "kwargs": {"mode": "joint"}},
            "env": {"minibatch_size": None, "max_steps": 6},
            "stopping": {"max_total_steps": 6, "test_threshold": 0.99},
            "gate": {"mode": "full_split"},  # a few test traces: the old rule
            "phoenix": {
                "endpoint": phoenix_server.url,
                "publish_prompt": True,
                "prompt_name": prompt,
            },
        }
    )
    result = run_experiment(config, out=tmp_path / "run", progress=False, integrations=PHOENIX)
    summary = result.summary
    assert summary["promotions"] >= 1 and summary["test"] > summary["baseline"]["test"]
    record = json.loads((result.run_dir / "phoenix.json").read_text())
    live = summary["promoted_version"]
    published = [p for p in record["published"] if p["registry_version"] == live]
    assert sorted(p["node"] for p in published) == ["responder", "router"]
    with PhoenixPrompts(phoenix_server.url) as px:
        for entry in published:
            version = load_version(px, entry["prompt_name"], version_id=entry["phoenix_version_id"])
            assert entry["prompt_name"] == f"{prompt}-{entry['node']}"
            assert version.metadata["selfimprove"]["node"] == entry["node"]
        router_version = load_version(px, f"{prompt}-router")
    promoted = Registry(result.run_dir / "versions.jsonl").build(live).state
    assert isinstance(promoted, ProgramState)
    router_state = promoted.node("router")
    assert router_version.system_prompt == router_state.render()
    assert router_version.demos == router_state.demos
    assert (result.run_dir / "prompt.diff").read_text().count("+++ program/") == 2
