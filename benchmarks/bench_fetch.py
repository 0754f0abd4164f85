"""Fetch benchmark: how long do fetching and building a checkpoint from N spans take? Prints JSON.

Workload: a fresh local Phoenix server (its own process and sqlite file) holding ``--spans``
LLM spans (default 10,000; an SOP system prompt, one user turn, the assistant reply, model and
invocation parameters, as the OpenInference OpenAI instrumentor writes them), one eval
annotation per span with the instrumentor's metadata (constants id and template variables),
and the evaluator span that carries the eval constants. Data is loaded through the REST API
(``client.spans.log_spans`` / ``log_span_annotations``), which is not what is measured.

Measured, ``--trials`` times each (best and median reported, as ``timeit`` does):

* ``fetch``: ``PhoenixSource.fetch(since=...)`` — every LLM span (paged), their annotations and
  the eval constants, into DataFrames;
* ``build``: ``build_checkpoint(frames)`` — the checkpoint with every sample;
* ``save_checkpoint``: ``Checkpoint.save`` of the result (JSON).

Run: ``.venv/bin/python benchmarks/bench_fetch.py [--spans 10000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("PHOENIX_DISCOVER_CONFIG", "false")

from selfimprove_rl.telemetry import PhoenixServer, PhoenixSource, build_checkpoint
from selfimprove_rl.telemetry.instrument import (
    ATTR,
    META_CONSTANTS_ID,
    META_VARIABLES,
    constants_id,
)

SOP = (
    'if input mentions coffee or espresso: respond "I see you are a person of taste! '
    'I like coffee, too."\nelse: respond "Well, I don\'t like sports."'
)
REPLIES = ["I see you are a person of taste! I like coffee, too.", "Well, I don't like sports."]
CONSTANTS = {
    "name": "matches_reference",
    "kind": "classifier",
    "evaluator_class": "phoenix.evals.evaluators.ClassificationEvaluator",
    "template": "Output: {output}\nReference: {reference}\nDoes the output match?",
    "template_format": "string",
    "template_variables": ["output", "reference"],
    "labels": ["correct", "incorrect"],
    "choices": {"correct": 1.0, "incorrect": 0.0},
    "label_descriptions": {},
    "eval_model": "sim-large",
    "eval_provider": "openai",
    "direction": "maximize",
    "include_explanation": True,
    "eval_parameters": {},
}


def llm_span(i: int, start: datetime) -> dict[str, Any]:
    reply = REPLIES[i % 2]
    return {
        "name": "ChatCompletion",
        "context": {"trace_id": secrets.token_hex(16), "span_id": secrets.token_hex(8)},
        "span_kind": "LLM",
        "start_time": start.isoformat(),
        "end_time": (start + timedelta(milliseconds=40)).isoformat(),
        "status_code": "OK",
        "attributes": {
            "openinference.span.kind": "LLM",
            "llm.system": "openai",
            "llm.model_name": "sim-large",
            "llm.invocation_parameters": json.dumps({"model": "sim-large", "temperature": 0.0}),
            "llm.input_messages": [
                {"message.role": "system", "message.content": SOP},
                {"message.role": "user", "message.content": f"message number {i} about my day"},
            ],
            "llm.output_messages": [{"message.role": "assistant", "message.content": reply}],
            "llm.token_count.prompt": 60,
            "llm.token_count.completion": 12,
            "llm.token_count.total": 72,
        },
    }


def load(client: Any, project: str, n: int, start: datetime) -> dict[str, float]:
    """Log ``n`` LLM spans, their annotations and the evaluator span; wait for ingestion."""
    started = time.perf_counter()
    cid = constants_id(CONSTANTS)
    spans = [llm_span(i, start + timedelta(milliseconds=50 * i)) for i in range(n)]
    evaluator = {
        "name": "matches_reference.classify",
        "context": {"trace_id": secrets.token_hex(16), "span_id": secrets.token_hex(8)},
        "span_kind": "EVALUATOR",
        "start_time": start.isoformat(),
        "end_time": start.isoformat(),
        "status_code": "OK",
        "attributes": {
            "openinference.span.kind": "EVALUATOR",
            ATTR + "name": CONSTANTS["name"],
            ATTR + "constants_id": cid,
            ATTR + "constants": json.dumps(CONSTANTS),
        },
    }
    for i in range(0, n, 1000):
        client.spans.log_spans(project_identifier=project, spans=spans[i : i + 1000])
    client.spans.log_spans(project_identifier=project, spans=[evaluator])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        frame = client.spans.get_spans_dataframe(project_identifier=project, limit=n + 10)
        if len(frame) >= n + 1:
            break
        time.sleep(2)
    else:
        raise RuntimeError("Phoenix did not ingest the spans within 10 minutes")
    ingested = time.perf_counter()
    annotations = [
        {
            "name": "matches_reference",
            "annotator_kind": "LLM",
            "span_id": span["context"]["span_id"],
            "result": {
                "label": "correct" if i % 2 == 0 else "incorrect",
                "score": 1.0 if i % 2 == 0 else 0.0,
                "explanation": "deterministic benchmark verdict",
            },
            "metadata": {
                META_CONSTANTS_ID: cid,
                META_VARIABLES: {"output": REPLIES[i % 2], "reference": REPLIES[0]},
            },
        }
        for i, span in enumerate(spans)
    ]
    for i in range(0, n, 1000):
        client.spans.log_span_annotations(span_annotations=annotations[i : i + 1000], sync=True)
    return {
        "spans_seconds": round(ingested - started, 2),
        "annotations_seconds": round(time.perf_counter() - ingested, 2),
    }


def stats(values: list[float]) -> dict[str, float]:
    return {"best": round(min(values), 3), "median": round(statistics.median(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_000, help="LLM spans to load.")
    parser.add_argument("--trials", type=int, default=3, help="Timed repetitions.")
    parser.add_argument("--page-size", type=int, default=2000, help="PhoenixSource page size.")
    parser.add_argument(
        "--endpoint", help="Use this running Phoenix instead of starting one (keeps the data)."
    )
    parser.add_argument("--project", default="bench-fetch", help="Project to load and fetch.")
    parser.add_argument(
        "--skip-load", action="store_true", help="The project already holds the data."
    )
    args = parser.parse_args()

    start = datetime(2026, 1, 1, tzinfo=UTC)
    project = args.project
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        if args.endpoint:
            url = args.endpoint
        else:
            url = stack.enter_context(PhoenixServer(Path(tmp) / "px")).url
        from phoenix.client import Client

        loading = {} if args.skip_load else load(Client(base_url=url), project, args.spans, start)
        fetch_times: list[float] = []
        build_times: list[float] = []
        save_times: list[float] = []
        source = PhoenixSource(url, project, page_size=args.page_size, progress=False)
        checkpoint = None
        for _ in range(args.trials):
            began = time.perf_counter()
            frames = source.fetch(since=start)
            fetched = time.perf_counter()
            checkpoint = build_checkpoint(frames)
            built = time.perf_counter()
            checkpoint.save(Path(tmp) / "checkpoint.json")
            saved = time.perf_counter()
            fetch_times.append(fetched - began)
            build_times.append(built - fetched)
            save_times.append(saved - built)
        assert checkpoint is not None
        summary = source.summary
        total = [f + b for f, b in zip(fetch_times, build_times, strict=True)]
        print(
            json.dumps(
                {
                    "spans": summary.spans,
                    "evaluated_spans": summary.evaluated_spans,
                    "samples": len(checkpoint.samples),
                    "evals": [c.name for c in checkpoint.eval_constants],
                    "page_size": args.page_size,
                    "pages": summary.pages,
                    "fetch_seconds": stats(fetch_times),
                    "fetch_steps_seconds": summary.step_seconds,
                    "build_seconds": stats(build_times),
                    "fetch_and_build_seconds": stats(total),
                    "spans_per_second": round(summary.spans / min(total)),
                    "save_checkpoint_seconds": stats(save_times),
                    "load_data": loading,
                    "trials": args.trials,
                    "cpu_count": os.cpu_count(),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
