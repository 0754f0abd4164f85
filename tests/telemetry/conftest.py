"""Helpers for the telemetry tests: spans as Phoenix stores them, and a traced project."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

SOP = (
    'if input mentions coffee or espresso: respond "I see you are a person of taste! '
    'I like coffee, too."\nelse: respond "Well, I don\'t like sports."'
)
COFFEE = "I see you are a person of taste! I like coffee, too."
SPORTS = "Well, I don't like sports."
TEMPLATE = "Output: {output}\nReference: {reference}\nDoes the output match the reference?"
INPUTS = [
    "I love a strong espresso after lunch",
    "Our team won the football match yesterday",
    "Coffee is the first thing I think about",
    "I go running every morning",
]


def span_id() -> str:
    return secrets.token_hex(8)


def llm_span(
    start: datetime,
    *,
    system: str | None = "be brief",
    user: str = "hello",
    output: str | None = "hi there",
    model: str | None = "sim-large",
    parameters: Any = None,
    status: str = "OK",
    sid: str | None = None,
    extra: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One LLM span in the v1 REST form (``client.spans.log_spans``)."""
    messages = []
    if system is not None:
        messages.append({"message.role": "system", "message.content": system})
    messages.append({"message.role": "user", "message.content": user})
    attributes: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "llm.input_messages": messages,
        "llm.invocation_parameters": json.dumps(
            parameters if parameters is not None else {"temperature": 0.0}
        ),
    }
    if model is not None:
        attributes["llm.model_name"] = model
    if output is not None:
        attributes["llm.output_messages"] = [
            {"message.role": "assistant", "message.content": output}
        ]
    attributes.update(extra or {})
    for key in drop:
        attributes.pop(key, None)
    return {
        "name": "ChatCompletion",
        "context": {"trace_id": secrets.token_hex(16), "span_id": sid or span_id()},
        "span_kind": "LLM",
        "start_time": start.isoformat(),
        "end_time": (start + timedelta(milliseconds=3)).isoformat(),
        "status_code": status,
        "attributes": attributes,
    }


def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "Phoenix") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def log_spans(client: Any, project: str, spans: list[dict[str, Any]]) -> None:
    """Log spans through the REST API and wait until Phoenix returns them all."""
    for i in range(0, len(spans), 500):
        client.spans.log_spans(project_identifier=project, spans=spans[i : i + 500])
    wanted = {s["context"]["span_id"] for s in spans}

    def visible() -> bool:
        frame = client.spans.get_spans_dataframe(project_identifier=project, limit=len(spans) + 100)
        return not frame.empty and wanted <= set(frame["context.span_id"])

    wait_until(visible, what=f"{len(spans)} spans in {project}")


@pytest.fixture
def project(request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]
    return f"t-{name}-{secrets.token_hex(3)}"


@pytest.fixture
def px_client(phoenix_server: Any) -> Any:
    from phoenix.client import Client

    return Client(base_url=phoenix_server.url)


@pytest.fixture
def t0() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def tracing(phoenix_server: Any, project: str) -> Iterator[Any]:
    """A tracer provider for ``project`` with the openai SDK instrumented (simple export)."""
    from selfimprove_rl.telemetry import setup_tracing, teardown_tracing

    provider = setup_tracing(phoenix_server.url, project, batch=False)
    try:
        yield provider
    finally:
        teardown_tracing(provider)


@pytest.fixture
def recorder(tracing: Any) -> Iterator[Any]:
    from selfimprove_rl.telemetry import instrument_evals, uninstrument_evals

    active = instrument_evals(tracing)
    try:
        yield active
    finally:
        uninstrument_evals()


@pytest.fixture
def judge_llm() -> Any:
    """A Phoenix-evals LLM answered by the simulated model in process."""
    from phoenix.evals import LLM

    from selfimprove_rl.backend import Backend

    return LLM(provider="openai", model="sim-large", **Backend().phoenix_llm_kwargs())


@pytest.fixture
def classifier(judge_llm: Any) -> Any:
    from phoenix.evals import create_classifier

    return create_classifier(
        name="matches_reference",
        prompt_template=TEMPLATE,
        llm=judge_llm,
        choices={"correct": 1.0, "incorrect": 0.0},
    )


def send_traffic(inputs: list[str] = INPUTS, system: str = SOP) -> list[str]:
    """Call the simulated model through the (instrumented) openai SDK; return the replies."""
    from selfimprove_rl.backend import Backend

    client = Backend().sync_client()
    replies = []
    for text in inputs:
        response = client.chat.completions.create(
            model="sim-large",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
            temperature=0.0,
        )
        replies.append(response.choices[0].message.content or "")
    return replies


def traced_rows(client: Any, project: str, expected: int) -> Any:
    """The project's LLM spans as eval input rows: span id, trace id, input and output."""
    import pandas as pd

    holder: dict[str, Any] = {}

    def ready() -> bool:
        frame = client.spans.get_spans_dataframe(project_identifier=project)
        holder["frame"] = frame
        return len(frame) >= expected

    wait_until(ready, what=f"{expected} traced spans")
    frame = holder["frame"].reset_index(drop=True)
    return pd.DataFrame(
        {
            "context.span_id": frame["context.span_id"],
            "context.trace_id": frame["context.trace_id"],
            "input": [m[-1]["message.content"] for m in frame["attributes.llm.input_messages"]],
            "output": [m[0]["message.content"] for m in frame["attributes.llm.output_messages"]],
            "reference": COFFEE,
        }
    )
