"""A scripted Phoenix-evals judge in process (an OpenAI-compatible transport, no SDK mocks)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from selfimprove_rl.checkpoint import Sample

JUDGE_SECRET = "sk-judge-secret-0123456789"


def chat_completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-judge",
        "object": "chat.completion",
        "created": 0,
        "model": "judge",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }


class ScriptedJudge:
    """Answers classification requests: ``correct`` when the prompt's Output equals its Reference.

    ``override(prompt, attempt)`` may return an HTTP response (a fault) or a label to answer.
    """

    def __init__(
        self, override: Callable[[str, int], httpx.Response | str | None] | None = None
    ) -> None:
        self.override = override
        self.prompts: list[str] = []
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        prompt = "\n".join(str(m["content"]) for m in body["messages"])
        self.prompts.append(prompt)
        label: str | None = None
        if self.override is not None:
            answer = self.override(prompt, self.prompts.count(prompt))
            if isinstance(answer, httpx.Response):
                return answer
            label = answer
        if label is None:
            output = re.search(r"Output: (.*)", prompt)
            reference = re.search(r"Reference: (.*)", prompt)
            same = output and reference and output.group(1).strip() == reference.group(1).strip()
            label = "correct" if same else "incorrect"
        arguments = json.dumps({"explanation": f"judged {label}", "label": label})
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            call = {
                "id": "call_1",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            message = {"role": "assistant", "content": arguments}
        return httpx.Response(200, json=chat_completion(message))

    @property
    def calls(self) -> int:
        return len(self.prompts)

    def llm_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": "http://judge.test/v1",
            "api_key": JUDGE_SECRET,
            "sync_client_kwargs": {
                "http_client": httpx.Client(transport=httpx.MockTransport(self))
            },
            "async_client_kwargs": {
                "http_client": httpx.AsyncClient(transport=httpx.MockTransport(self))
            },
        }


def make_sample(
    sample_id: str,
    user: str = "I love espresso",
    reference: str | None = "I like coffee, too.",
    eval_variables: dict[str, dict[str, str]] | None = None,
) -> Sample:
    return Sample(
        sample_id=sample_id,
        chat_history=[{"role": "user", "content": user}],
        output_generation={"role": "assistant", "content": reference or ""},
        reference=reference,
        eval_variables=eval_variables or {},
    )


@pytest.fixture
def judge() -> ScriptedJudge:
    return ScriptedJudge()


@pytest.fixture
def scripted_judge() -> type[ScriptedJudge]:
    return ScriptedJudge


@pytest.fixture
def sample_factory() -> Callable[..., Sample]:
    return make_sample
