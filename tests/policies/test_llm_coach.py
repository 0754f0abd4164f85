from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from policy_helpers import COFFEE, HashEmbedder, coffee_sports_rows, info, observation
from scripted_server import HTTPError, ScriptedServer

from envs.spaces import EnvAction
from policies.base import Transition
from policies.llm_coach import (
    CoachReply,
    LLMCoachPolicy,
    LLMCoachProposer,
    extract_json,
    parse_reply,
)
from selfimprove_rl.errors import CoachOutputError
from selfimprove_rl.prompt import NoOp

SECRET = "sk-coach-secret-7f3a9c"
RULE = f'if input is about coffee or espresso: respond "{COFFEE}"'
GOOD = json.dumps(
    {"target_block": "sop", "directives": [f"ADD: {RULE}"], "rationale": "Route coffee."}
)


@pytest.fixture
def coach_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COACH_TEST_KEY", SECRET)
    return "COACH_TEST_KEY"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer([]) as running:
        yield running


def _policy(
    server: ScriptedServer, key_env: str = "COACH_TEST_KEY", **options: object
) -> LLMCoachPolicy:
    return LLMCoachPolicy(
        seed=0,
        model="coach-model",
        base_url=server.base_url,
        api_key_env=key_env,
        embedder=HashEmbedder(),
        **options,  # type: ignore[arg-type]
    )


def _feedback(server: ScriptedServer, request: int) -> str:
    return server.requests[request]["messages"][-1]["content"]


def test_a_good_reply_becomes_an_action_against_the_current_version(
    server: ScriptedServer, coach_key: str
) -> None:
    server.add(GOOD)
    action = _policy(server).act(observation(), info(coffee_sports_rows()))
    assert isinstance(action, EnvAction)
    assert action.edits == f"BLOCK: sop\nADD: {RULE}" and action.base_version == "v0"
    (request,) = server.requests
    assert request["model"] == "coach-model"
    assert request["response_format"]["type"] == "json_schema"
    system, user = request["messages"]
    assert "one small change" in system["content"] and "no_change" in system["content"]
    assert (
        '{"target_block": "sop", "directives": ["ADD: If the message is like' in (system["content"])
    ), "a filled example shows a real block name (small models copy the example)"
    for section in (
        "## Scores",
        "## Worst examples",
        "## Change log",
        "## Prompt",
        "[sop]\n1. Answer",
        "## Demonstrations",
    ):
        assert section in user["content"]


def test_the_api_key_is_sent_but_never_kept(server: ScriptedServer, coach_key: str) -> None:
    server.add(GOOD)
    policy = _policy(server)
    policy.act(observation(), info(coffee_sports_rows()))
    assert SECRET not in json.dumps(policy.state_dict()) and SECRET not in repr(
        policy.proposer.backend
    )


def test_malformed_json_is_retried_with_the_error_fed_back(
    server: ScriptedServer, coach_key: str
) -> None:
    server.add('{"target_block": "sop", "directives": [', GOOD)
    action = _policy(server).act(observation(), info(coffee_sports_rows()))
    assert action.edits.endswith(RULE)
    assert len(server.requests) == 2
    assert "not valid JSON" in _feedback(server, 1)
    assert server.requests[1]["messages"][-2] == {
        "role": "assistant",
        "content": '{"target_block": "sop", "directives": [',
    }


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "The reply was empty."),
        (None, "The reply was empty."),
        ('{"answer": "add a coffee rule"}', "does not match the schema"),
        ('["ADD: x"]', "Expected a JSON object"),
        (json.dumps({"target_block": "sop", "directives": ["EDIT: 9 -> hello"]}), "out of range"),
        (
            json.dumps({"target_block": "sop", "directives": ["PLEASE: add coffee"]}),
            "unknown keyword",
        ),
        (
            json.dumps({"target_block": "rules", "directives": ["ADD: x"]}),
            "not a block of the prompt",
        ),
    ],
)
def test_invalid_replies_are_explained_in_the_retry(
    server: ScriptedServer, coach_key: str, bad: str | None, message: str
) -> None:
    server.add(bad, GOOD)
    action = _policy(server).act(observation(), info(coffee_sports_rows()))
    assert action.edits.endswith(RULE)
    assert message in _feedback(server, 1)


def test_all_bad_replies_fall_back_to_a_counted_no_op(
    server: ScriptedServer, coach_key: str
) -> None:
    server.add("nope", "{}", HTTPError(500, "overloaded"))
    policy = _policy(server, max_retries=2)
    action = policy.act(observation(), info(coffee_sports_rows()))
    assert action.edits == [NoOp()]
    assert policy.failure_count == 1
    (errors,) = [f["errors"] for f in policy.coach_failures]
    assert "not valid JSON" in errors[0] and "request failed" in errors[0]
    policy.update(Transition(observation(), action, 0.0, observation(), False, False, info([])))
    assert policy.proposer.change_log == []


def test_ask_raises_coach_output_error_after_the_retries(
    server: ScriptedServer, coach_key: str
) -> None:
    server.add("", "")
    proposer = LLMCoachProposer(
        {"model": "m", "max_retries": 1},
        backend={"kind": "openai", "base_url": server.base_url, "api_key_env": coach_key},
        embedder=HashEmbedder(),
    )
    with pytest.raises(CoachOutputError, match=re.escape("gave no usable reply in 2 attempts")):
        proposer.ask(observation(), info(coffee_sports_rows()))


def test_no_change_is_a_valid_answer(server: ScriptedServer, coach_key: str) -> None:
    server.add(
        json.dumps({"target_block": "sop", "directives": ["no_change"], "rationale": "Fine."})
    )
    action = _policy(server).act(observation(), info(coffee_sports_rows()))
    assert action.edits == [NoOp()] and action.origin == "llm_coach:no_change"


def test_fenced_replies_and_a_single_directive_string_are_accepted(
    server: ScriptedServer, coach_key: str
) -> None:
    reply = (
        "Here you go:\n```json\n"
        + json.dumps({"target_block": "sop", "directives": f"ADD: {RULE}\nDEL: 1"})
        + "\n```"
    )
    server.add(reply)
    action = _policy(server).act(observation(), info(coffee_sports_rows()))
    assert action.edits == f"BLOCK: sop\nADD: {RULE}\nDEL: 1"


def test_structured_output_falls_back_when_the_server_refuses_it(coach_key: str) -> None:
    with ScriptedServer([GOOD, GOOD], reject_formats={"json_schema", "json_object"}) as server:
        policy = _policy(server)
        policy.act(observation(), info(coffee_sports_rows()))
        assert [r.get("response_format") for r in server.requests] == [None]
        assert len(server.rejected) == 2
        policy.act(observation(), info(coffee_sports_rows()))
        assert len(server.rejected) == 2, "the working mode is remembered"


def test_trials_branch_from_one_base_and_continue_from_the_best(
    server: ScriptedServer, coach_key: str
) -> None:
    second = json.dumps({"target_block": "sop", "directives": ['ADD: else: respond "Sports!"']})
    server.add(GOOD, second)
    policy = _policy(server, trials=2)
    obs, data = observation(), info(coffee_sports_rows())
    first_action = policy.act(obs, data)
    assert "trial 1 of 2" in server.requests[0]["messages"][1]["content"]
    assert "Already proposed in this round" in server.requests[1]["messages"][1]["content"]
    after_first = {
        **data,
        "step": 1,
        "version_id": "v1",
        "current_version_id": "v1",
        "accepted": True,
    }
    policy.update(
        Transition(obs, first_action, 0.4, {**obs, "version": "v1"}, False, False, after_first)
    )
    second_action = policy.act({**obs, "version": "v1"}, after_first)
    assert first_action.base_version == second_action.base_version == "v0"
    after_second = {
        **data,
        "step": 2,
        "version_id": "v2",
        "current_version_id": "v2",
        "accepted": True,
    }
    policy.update(
        Transition(obs, second_action, 0.1, {**obs, "version": "v2"}, False, False, after_second)
    )
    assert [e["reward"] for e in policy.proposer.change_log] == [0.4, 0.1]
    server.add(GOOD, GOOD)
    third = policy.act({**obs, "version": "v2"}, after_second)
    assert third.base_version == "v1", "the next round starts from the best trial"
    assert "reward +0.400 (kept)" in server.requests[2]["messages"][1]["content"]


def test_state_round_trips_and_a_restored_coach_continues_the_round(
    server: ScriptedServer, coach_key: str
) -> None:
    server.add(GOOD, GOOD)
    policy = _policy(server, trials=2)
    policy.act(observation(), info(coffee_sports_rows()))
    state = json.loads(json.dumps(policy.state_dict()))
    restored = _policy(server, trials=2)
    restored.load_state_dict(state)
    before = len(server.requests)
    assert restored.act(observation(), info(coffee_sports_rows())) == policy.act(
        observation(), info(coffee_sports_rows())
    )
    assert len(server.requests) == before, "the queued trial needs no new request"


def test_reply_parsing_helpers() -> None:
    assert extract_json('prose {"directives": []} more prose') == {"directives": []}
    assert parse_reply('{"directives": "ADD: a\\n\\nDEL: 2"}').lines() == ["ADD: a", "DEL: 2"]
    assert CoachReply(directives=[]).lines() == []


def test_proposers_are_built_from_plain_keyword_arguments() -> None:
    from policies.catalog import make_proposer

    coach = make_proposer("llm_coach", kwargs={"model": "m", "base_url": "http://127.0.0.1:9/v1"})
    assert (
        coach.config.model == "m" and coach.backend.describe() == "openai-compatible (127.0.0.1:9)"
    )
    rules = make_proposer("rule_induction", seed=0, kwargs={"min_df": 3, "max_demos": 4})
    assert (rules.config.min_df, rules.config.max_demos) == (3, 4)


def test_keys_echoed_in_server_errors_are_redacted(server: ScriptedServer, coach_key: str) -> None:
    server.add(
        HTTPError(401, f"Incorrect API key provided: {SECRET}."),
        HTTPError(401, "Incorrect API key provided: sk-abc1***********wxyz."),
        HTTPError(500, "overloaded"),
    )
    policy = _policy(server)
    policy.act(observation(), info(coffee_sports_rows()))
    saved = json.dumps(policy.state_dict())
    assert "AuthenticationError" in saved and "[redacted]" in saved
    assert SECRET not in saved and "sk-abc1" not in saved


def test_a_bandit_over_both_proposers_reports_its_coach(
    server: ScriptedServer, coach_key: str
) -> None:
    from policies.bandits import UCB1Policy

    for _ in range(3):  # one request per arm the coach is asked for
        server.add(GOOD)
    bandit = UCB1Policy(
        seed=0,
        proposer="operators+llm_coach",
        proposer_kwargs={
            "llm_coach": {
                "model": "coach-model",
                "base_url": server.base_url,
                "api_key_env": coach_key,
                "embedder": HashEmbedder(),
            }
        },
        arms=3,
    )
    bandit.act(observation(), info(coffee_sports_rows()))
    coach = bandit.report()["proposers"]["llm_coach"]
    assert coach["requests"] == coach["replies"] == len(server.requests) > 0
    assert coach["valid_share"] == 1.0
    assert coach["format"] == "json_schema"
