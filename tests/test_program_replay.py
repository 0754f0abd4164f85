"""Program replay through the one Replayer: node order, the cache, upstream failures."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from selfimprove_rl.checkpoint import Action, Sample
from selfimprove_rl.errors import ProgramError, ReplayError
from selfimprove_rl.program import MessageTemplate, Program, ProgramNode
from selfimprove_rl.program_replay import UPSTREAM_FAILED, ProgramReplayer
from selfimprove_rl.replay import ReplayConfig, Replayer


class Endpoint:
    """OpenAI-compatible in process: the router answers the first word, the responder echoes.

    A user message containing BOOM is refused with HTTP 400 (not retryable).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        system = body["messages"][0]["content"]
        user = body["messages"][-1]["content"]
        if "BOOM" in user:
            return httpx.Response(400, json={"error": {"message": "refused"}})
        text = user.split()[0].lower() if system.startswith("route") else f"{system}|{user}"
        return httpx.Response(
            200,
            json={
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            },
        )

    def count(self, system_prefix: str) -> int:
        return sum(
            1
            for body in self.requests
            if str(body["messages"][0]["content"]).startswith(system_prefix)  # type: ignore[index]
        )


PROGRAM = Program(
    nodes=(
        ProgramNode(name="router", messages=(MessageTemplate(content="{{input}}"),)),
        ProgramNode(
            name="responder",
            messages=(MessageTemplate(content="[{{nodes.router.output}}] {{input}}"),),
        ),
    )
)


def samples(*texts: str) -> list[Sample]:
    return [
        Sample(
            sample_id=f"s{i}",
            chat_history=[{"role": "user", "content": text}],
            output_generation={"role": "assistant", "content": "-"},
        )
        for i, text in enumerate(texts)
    ]


def replayer(endpoint: Endpoint) -> ProgramReplayer:
    client = openai.AsyncOpenAI(
        api_key="k",
        base_url="http://scripted.test/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(endpoint)),
    )
    return ProgramReplayer(Replayer(client, config=ReplayConfig(max_retries=0)), PROGRAM)


def actions(router: str = "route", responder: str = "answer") -> dict[str, Action]:
    return {
        "router": Action(system_prompt=router, model="m"),
        "responder": Action(system_prompt=responder, model="m"),
    }


def test_nodes_run_in_order_with_upstream_outputs_substituted() -> None:
    endpoint = Endpoint()
    program = replayer(endpoint)
    report = program.replay_sync(samples("Billing issue", "Lost parcel"), actions())
    program.close()
    assert report.order == ("router", "responder")
    assert [o.text for o in report.nodes["router"].outcomes] == ["billing", "lost"]
    assert report.texts == ["answer|[billing] Billing issue", "answer|[lost] Lost parcel"]
    assert report.usage.calls == 4


def test_unchanged_prefixes_are_free_and_only_changed_requests_are_sent() -> None:
    endpoint = Endpoint()
    program = replayer(endpoint)
    traces = samples("Billing a", "Billing b", "Lost c")
    first = program.replay_sync(traces, actions())
    assert first.usage.calls == 6
    changed_last = program.replay_sync(traces, actions(responder="reply"))
    assert changed_last.nodes["router"].usage.calls == 0
    assert changed_last.nodes["router"].usage.cache_hits == 3
    assert changed_last.nodes["responder"].usage.calls == 3
    changed_first = program.replay_sync(traces, actions(router="route!"))
    assert changed_first.nodes["router"].usage.calls == 3
    # the router said the same words, so every responder request is an old one
    assert changed_first.nodes["responder"].usage.calls == 0
    assert endpoint.count("reply") == 3
    program.close()


def test_a_failed_node_fails_its_downstream_nodes_without_calling_them() -> None:
    endpoint = Endpoint()
    program = replayer(endpoint)
    report = program.replay_sync(samples("Billing a", "BOOM b"), actions())
    program.close()
    router, responder = report.nodes["router"], report.nodes["responder"]
    assert router.outcomes[1].error_type == "BadRequestError"
    assert responder.outcomes[1].error_type == UPSTREAM_FAILED
    assert "upstream node 'router' failed" in (responder.outcomes[1].error or "")
    assert report.failed == {"s1": responder.outcomes[1].error}
    assert report.failures_by_node == {
        "router": {"BadRequestError": 1},
        "responder": {UPSTREAM_FAILED: 1},
    }
    assert endpoint.count("answer") == 1
    assert report.texts[0] == "answer|[billing] Billing a"


def test_systemic_faults_raise_and_missing_actions_are_named() -> None:
    program = replayer(Endpoint())
    with pytest.raises(ReplayError, match="Every one of the 1 samples failed"):
        program.replay_sync(samples("BOOM"), actions())
    with pytest.raises(ProgramError, match=r"missing \['responder'\]"):
        program.replay_sync(samples("x"), {"router": actions()["router"]})
    program.close()
