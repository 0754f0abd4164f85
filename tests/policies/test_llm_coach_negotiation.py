"""The LLM coach against real HTTP servers: structured-output negotiation, systemic failures,
reply counters, and the command line's exit code when the coach cannot be reached."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from policy_helpers import COFFEE, HashEmbedder, coffee_sports_rows, info, observation
from scripted_server import HTTPError, ScriptedServer

from envs.spaces import EnvAction
from policies.llm_coach import LLMCoachPolicy, extract_json
from selfimprove_rl.errors import CoachUnavailableError

RULE = f'if input is about coffee or espresso: respond "{COFFEE}"'
GOOD = json.dumps(
    {"target_block": "sop", "directives": [f"ADD: {RULE}"], "rationale": "Route coffee."}
)


def _policy(base_url: str, **options: object) -> LLMCoachPolicy:
    return LLMCoachPolicy(
        seed=0,
        model="coach-model",
        base_url=base_url,
        api_key_env="COACH_NEGOTIATION_TEST_KEY",
        embedder=HashEmbedder(),
        backoff_s=0.0,
        **options,  # type: ignore[arg-type]
    )


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_a_500_naming_response_format_steps_down_to_json_object_and_is_remembered() -> None:
    with ScriptedServer([GOOD, GOOD], reject_formats={"json_schema"}, reject_status=500) as server:
        policy = _policy(server.base_url)
        action = policy.act(observation(), info(coffee_sports_rows()))
        assert isinstance(action, EnvAction) and action.edits.endswith(RULE)
        assert [r["response_format"]["type"] for r in server.rejected] == ["json_schema"]
        assert [r["response_format"]["type"] for r in server.requests] == ["json_object"]
        report = policy.report()
        assert report["format"] == "json_object"
        assert report["refused_formats"] == ["json_schema"]
        assert report["request_failures"] == 0, "a refused mode is negotiation, not a failure"
        assert policy.proposer.chat.refusals[0]["status"] == 500

        restored = _policy(server.base_url)
        restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
        restored.act(observation(), info(coffee_sports_rows()))
        assert len(server.rejected) == 1, "the negotiated mode survives a resume"
        assert server.requests[-1]["response_format"] == {"type": "json_object"}


def test_a_server_refusing_both_json_modes_gets_plain_text_and_prose_is_parsed() -> None:
    prose = f"Sure. Braces {{like these}} aside, here it is: {GOOD} Hope that helps!"
    with ScriptedServer([prose], reject_formats={"json_schema", "json_object"}) as server:
        policy = _policy(server.base_url)
        action = policy.act(observation(), info(coffee_sports_rows()))
        assert action.edits.endswith(RULE)
        assert "response_format" not in server.requests[0]
        assert policy.report()["format"] == "text"
        assert policy.report()["refused_formats"] == ["json_schema", "json_object"]


def test_a_500_that_does_not_name_response_format_is_a_failure_not_a_refusal() -> None:
    with ScriptedServer([HTTPError(500, "overloaded"), GOOD]) as server:
        policy = _policy(server.base_url)
        policy.act(observation(), info(coffee_sports_rows()))
        report = policy.report()
        assert report["format"] == "json_schema" and report["refused_formats"] == []
        assert report["request_failures"] == 1 and report["requests"] == 2
        assert policy.proposer.chat.consecutive_failures == 0, "a success resets the streak"


def test_replies_are_counted_by_verdict() -> None:
    bad_block = json.dumps({"target_block": "rules", "directives": ["ADD: x"]})
    no_change = json.dumps({"target_block": "sop", "directives": ["no_change"]})
    with ScriptedServer(["nope", "{}", GOOD, bad_block, "", no_change]) as server:
        policy = _policy(server.base_url, max_retries=2)
        policy.act(observation(), info(coffee_sports_rows()))
        policy._queue = []
        policy.act(observation(), info(coffee_sports_rows()))
        report = policy.report()
    assert report["verdicts"] == {
        "empty": 1,
        "no_change": 1,
        "not_json": 1,
        "off_schema": 1,
        "unknown_block": 1,
        "valid": 1,
    }
    assert report["replies"] == 6 and report["valid_share"] == pytest.approx(2 / 6, abs=1e-4)
    assert report["no_op_decisions"] == 0


def test_unparseable_replies_stay_counted_no_ops_and_never_stop_the_run() -> None:
    with ScriptedServer(["nope"] * 9) as server:
        policy = _policy(server.base_url, max_retries=2, max_consecutive_failures=2)
        for _ in range(3):
            assert policy.act(observation(), info(coffee_sports_rows())).edits != GOOD
            policy._queue = []
        assert policy.failure_count == 3
        assert policy.report()["verdicts"] == {"not_json": 9}


def test_an_unreachable_coach_raises_after_consecutive_failures() -> None:
    port = _closed_port()
    policy = _policy(f"http://127.0.0.1:{port}/v1", max_consecutive_failures=3, max_retries=5)
    with pytest.raises(CoachUnavailableError, match=re.escape("failed 3 requests in a row")) as err:
        policy.act(observation(), info(coffee_sports_rows()))
    message = str(err.value)
    assert "\n" not in message and "APIConnectionError" in message
    assert f"127.0.0.1:{port}" in message
    assert policy.proposer.chat.request_failures == 3


def test_failures_count_across_decisions_until_the_threshold() -> None:
    with ScriptedServer([HTTPError(503, "down")] * 4) as server:
        policy = _policy(server.base_url, max_retries=1, max_consecutive_failures=4)
        assert policy.act(observation(), info(coffee_sports_rows())).origin.endswith(
            "coach_failure"
        )
        policy._queue = []
        with pytest.raises(CoachUnavailableError, match="failed 4 requests in a row"):
            policy.act(observation(), info(coffee_sports_rows()))


def test_the_policy_seed_is_sent_with_each_request() -> None:
    with ScriptedServer([GOOD]) as server:
        _policy(server.base_url, temperature=0.0).act(observation(), info(coffee_sports_rows()))
        (request,) = server.requests
    assert request["seed"] == 0 and request["temperature"] == 0.0


def test_extract_json_prefers_the_object_with_directives() -> None:
    text = 'First {"note": 1} then {"directives": ["ADD: x"]} and {"other": 2}'
    assert extract_json(text) == {"directives": ["ADD: x"]}
    assert extract_json('just {"a": 1} here') == {"a": 1}


def test_run_exits_nonzero_with_the_cause_when_the_coach_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selfimprove_rl.cli import main

    port = _closed_port()
    config = tmp_path / "coach.toml"
    config.write_text(
        f"""
name = "unreachable_coach"
[data]
kind = "dataset"
path = "coffee_sports"
[env]
minibatch_size = 8
[policy]
name = "llm_coach"
kwargs = {{ model = "coach", base_url = "http://127.0.0.1:{port}/v1", backoff_s = 0.0 }}
[stopping]
max_total_steps = 6
""",
        encoding="utf-8",
    )
    code = main(["run", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    captured = capsys.readouterr()
    assert code != 0
    (line,) = [x for x in captured.err.splitlines() if x.startswith("selfimprove-rl run: error:")]
    assert "coach model 'coach'" in line and "failed 5 requests in a row" in line
    assert "APIConnectionError" in line
    assert not (tmp_path / "run" / "summary.json").exists()


def test_demos_in_a_reply_become_demo_directives_and_the_report_lists_demos() -> None:
    reply = json.dumps(
        {
            "target_block": "sop",
            "directives": ["no_change"],
            "demos": [{"input": 'An "espresso" please', "output": COFFEE}],
            "rationale": "Show one.",
        }
    )
    with ScriptedServer([reply]) as server:
        seen = {**observation(), "demos": (("Where is my tea?", "Tea is on its way."),)}
        action = _policy(server.base_url).act(seen, info(coffee_sports_rows()))
        user = server.requests[0]["messages"][1]["content"]
    assert action.edits == f'BLOCK: sop\nDEMO: "An \\"espresso\\" please" -> "{COFFEE}"'
    assert "## Demonstrations" in user and "1. user: Where is my tea?" in user
    assert "assistant: Tea is on its way." in user


def test_the_example_is_made_from_the_report_and_a_copied_placeholder_is_refused() -> None:
    copied = json.dumps(
        {
            "target_block": "sop",
            "directives": [
                "ADD: If the message is about <what such messages have in common>, "
                f"reply with exactly: {COFFEE}"
            ],
            "demos": [],
        }
    )
    with ScriptedServer([copied, GOOD]) as server:
        policy = _policy(server.base_url)
        rows = coffee_sports_rows()
        action = policy.act(observation(), info(rows))
        system = server.requests[0]["messages"][0]["content"]
        feedback = server.requests[1]["messages"][-1]["content"]
    first = next(r for r in rows if r["score"] < 0.99)
    rule = f"If the message is like {json.dumps(first['input'])}"
    assert json.dumps(rule)[1:-1] in system, "the rule is quoted inside the JSON example"
    example = system.split("(made from the first example in the report):\n")[1].splitlines()[0]
    assert f"reply with exactly: {COFFEE}" in example and "<" not in example
    assert "still holds the placeholder <what such messages have in common>" in feedback
    assert action.edits.endswith(RULE)
    assert policy.report()["verdicts"] == {"placeholder": 1, "valid": 1}
