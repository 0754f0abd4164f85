"""The LLM coach against the real local model (`make test-llm`; see test_local_llm_real.py)."""

from __future__ import annotations

import pytest
from policy_helpers import HashEmbedder, coffee_sports_rows, info, observation

from policies.llm_coach import LLMCoachProposer
from selfimprove_rl.backend import Backend
from selfimprove_rl.local_llm import DEFAULT_ALIAS

pytestmark = pytest.mark.llm


def test_the_coach_negotiates_json_object_with_llama_cpp(local_llm: Backend) -> None:
    coach = LLMCoachProposer(
        {"model": DEFAULT_ALIAS, "temperature": 0.0, "seed": 0, "max_retries": 1},
        backend={"kind": "local_llm"},
        embedder=HashEmbedder(),
    )
    coach.propose(observation(), info(coffee_sports_rows()[:6]), k=1)
    report = coach.report()
    assert report["refused_formats"] == ["json_schema"]
    assert coach.chat.refusals[0]["status"] == 500 and report["format"] == "json_object"
    assert report["replies"] >= 1 and report["request_failures"] == 0
    assert sum(report["verdicts"].values()) == report["replies"]
