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

Also printed: fetch + build total and spans per second, ``fetch_steps_seconds`` (reading
pages, building frames, reading eval constants), the server's own CPU seconds during each
fetch (the server this script starts, or ``--server-pid`` with ``--endpoint``; on a shared
machine the steadier figure), this process's peak RSS, and a digest of the checkpoint's
samples, action and evals (equal digests: the same checkpoint from two versions of the code).

Loading 100,000 spans takes tens of minutes on a loaded 2-core machine (Phoenix ingests a few
hundred spans a second); load once into a server you keep, then measure with ``--skip-load``:
``.venv/bin/python benchmarks/bench_fetch.py --endpoint URL --server-pid PID --project p100k
--spans 100000`` (loads and measures), then ``... --skip-load`` for further runs.

Run: ``.venv/bin/python benchmarks/bench_fetch.py [--spans 10000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("PHOENIX_DISCOVER_CONFIG", "false")

from selfimprove_rl.telemetry import PhoenixServer, PhoenixSource, build_checkpoint
from selfimprove_rl.telemetry.instrument import (
    ATTR,
    META_CONSTANTS_ID,
    META_VARIABLES,
    constants_id,
)

LOAD_TIMEOUT = 600  # a loaded machine's Phoenix takes long to ingest 1,000 spans

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


def log_spans(client: Any, project: str, spans: list[dict[str, Any]]) -> None:
    """Log spans; when Phoenix's ingestion queue is full (HTTP 503), wait and send again."""
    for _ in range(120):
        try:
            client.spans.log_spans(project_identifier=project, spans=spans, timeout=LOAD_TIMEOUT)
            return
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503:
                raise
            time.sleep(5)
    raise RuntimeError("Phoenix kept answering 503 (ingestion queue full) for 10 minutes")


def wait_for_spans(client: Any, project: str, span_ids: list[str]) -> None:
    """Wait until Phoenix has ingested every span (asked 100 ids at a time, cheaply)."""
    deadline = time.monotonic() + LOAD_TIMEOUT * 4
    pending = list(span_ids)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Phoenix did not ingest {len(pending)} spans in time")
        batch = pending[-100:]
        found = client.spans.get_spans(
            project_identifier=project, span_ids=batch, limit=len(batch), timeout=LOAD_TIMEOUT
        )
        got = {span["context"]["span_id"] for span in found}
        if len(got) == len(batch):
            del pending[-100:]
        else:
            time.sleep(2)


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
        log_spans(client, project, spans[i : i + 1000])
    log_spans(client, project, [evaluator])
    wait_for_spans(client, project, [s["context"]["span_id"] for s in [*spans, evaluator]])
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


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), 0 without one."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def checkpoint_digest(checkpoint: Any) -> str:
    """A hash of the samples, action and eval constants (not the creation time)."""
    body = {
        "samples": [s.model_dump(mode="json") for s in checkpoint.samples],
        "action": checkpoint.action.model_dump(mode="json"),
        "evals": [c.model_dump(mode="json") for c in checkpoint.eval_constants],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def stats(values: list[float]) -> dict[str, float]:
    return {"best": round(min(values), 3), "median": round(statistics.median(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_000, help="LLM spans to load.")
    parser.add_argument("--trials", type=int, default=3, help="Timed repetitions.")
    parser.add_argument("--page-size", type=int, help="PhoenixSource page size (its default).")
    parser.add_argument("--workers", type=int, help="PhoenixSource workers (its default).")
    parser.add_argument(
        "--server-pid", type=int, help="With --endpoint: report that server's CPU seconds."
    )
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
        server: Any = None
        if args.endpoint:
            url = args.endpoint
        else:
            server = stack.enter_context(PhoenixServer(Path(tmp) / "px"))
            url = server.url
        from phoenix.client import Client

        loader = Client(http_client=httpx.Client(base_url=url, timeout=LOAD_TIMEOUT))
        loading = {} if args.skip_load else load(loader, project, args.spans, start)
        fetch_times: list[float] = []
        build_times: list[float] = []
        save_times: list[float] = []
        options = {
            key: value
            for key, value in (("page_size", args.page_size), ("workers", args.workers))
            if value is not None
        }
        source = PhoenixSource(url, project, progress=False, **options)
        checkpoint = None
        rss_before = peak_rss_mb()
        # the server object keeps its process private; its pid is only read here
        server_pid = args.server_pid or getattr(getattr(server, "_process", None), "pid", None)
        server_cpu: list[float] = []
        for _ in range(args.trials):
            cpu_before = process_cpu_seconds(server_pid)
            began = time.perf_counter()
            frames = source.fetch(since=start)
            fetched = time.perf_counter()
            if server_pid:
                server_cpu.append(process_cpu_seconds(server_pid) - cpu_before)
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
                    "page_size": source.page_size,
                    "workers": getattr(source, "workers", 1),
                    "pages": summary.pages,
                    "fetch_seconds": stats(fetch_times),
                    "fetch_steps_seconds": summary.step_seconds,
                    "server_cpu_seconds_during_fetch": stats(server_cpu) if server_cpu else None,
                    "build_seconds": stats(build_times),
                    "fetch_and_build_seconds": stats(total),
                    "spans_per_second": {
                        "best": round(summary.spans / min(total)),
                        "median": round(summary.spans / statistics.median(total)),
                    },
                    "peak_rss_mb": {"before_fetch": rss_before, "after_trials": peak_rss_mb()},
                    "checkpoint_digest": checkpoint_digest(checkpoint),
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
