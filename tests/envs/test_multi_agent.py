from __future__ import annotations

import pytest
from pettingzoo.test import api_test, parallel_api_test

from envs import multi_agent
from selfimprove_rl.errors import EnvError
from selfimprove_rl.program_data import load_pipeline
from selfimprove_rl.program_state import NodeEdit
from selfimprove_rl.prompt import AddLine

CHECKPOINT = load_pipeline(model="sim-keyword", limit=60)
REPLIES = {s.node_references["router"]: s.reference for s in CHECKPOINT.samples}
ROUTER = "\n".join(
    [
        'ADD: if input mentions refund, charged, charge, payment, card: respond "billing"',
        'ADD: if input mentions package, parcel, delivery, tracking, order: respond "shipping"',
        'ADD: if input mentions password, log, login, account, email: respond "account"',
        'ADD: else: respond "other"',
    ]
)
RESPONDER = "\n".join(f'ADD: if input mentions {k}: respond "{v}"' for k, v in REPLIES.items())


def small(**kwargs: object) -> multi_agent.ProgramParallelEnv:
    return multi_agent.parallel_env(
        data=CHECKPOINT,
        minibatch_size=None,
        max_steps=4,
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_default_pipeline_passes_the_parallel_api_test() -> None:
    env = multi_agent.parallel_env()
    try:
        assert env.possible_agents == ["router", "responder"]
        parallel_api_test(env, num_cycles=3)
    finally:
        env.close()


def test_the_aec_form_passes_the_api_test() -> None:
    aec = multi_agent.env(data=CHECKPOINT, minibatch_size=4, max_steps=2)
    try:
        api_test(aec, num_cycles=4)
    finally:
        aec.close()


def test_difference_rewards_credit_both_halves_of_a_bootstrap() -> None:
    env = small()
    try:
        observations, infos = env.reset(seed=0)
        assert set(observations["router"]) == {
            "prompt",
            "blocks",
            "demos",
            "model",
            "version",
            "scores",
        }
        assert infos["router"]["examples"][0]["reference"] in REPLIES
        _, rewards, _, _, infos = env.step({"router": ROUTER, "responder": RESPONDER})
        team = infos["router"]["team_reward"]
        assert team > 0.5 and infos["responder"]["team_reward"] == team
        # the router's labels alone score 0 end to end, so the responder gets the whole gain;
        # the responder's rules alone catch a few generic replies, so the router gets the rest
        assert rewards["responder"] == pytest.approx(team)
        assert 0.5 < rewards["router"] < team
        assert infos["router"]["node_reward"] > 0.5 and infos["responder"]["node_reward"] is None
    finally:
        env.close()


def test_one_acting_agent_gets_the_team_reward_and_others_nothing() -> None:
    env = small(agent_reward="team")
    try:
        env.reset(seed=0)
        _, rewards, _, _, infos = env.step({"router": ROUTER, "responder": None})
        assert infos["router"]["difference_reward"] == infos["router"]["team_reward"] == 0.0
        assert infos["responder"]["edits"] == 0
        _, rewards, _, _, infos = env.step({"responder": RESPONDER})
        assert rewards["responder"] == rewards["router"] == infos["responder"]["team_reward"]
    finally:
        env.close()


def test_an_edit_of_another_agents_node_is_invalid_and_dropped() -> None:
    env = small(invalid_edit_penalty=0.5)
    try:
        env.reset(seed=0)
        intrusion = [NodeEdit(node="responder", edit=AddLine(text="x"))]
        _, rewards, _, _, infos = env.step({"router": intrusion, "responder": RESPONDER})
        assert rewards["router"] == -0.5
        assert infos["router"]["invalid_edit"]["message"].startswith("Agent 'router' owns")
        assert infos["responder"]["invalid_edit"] is None and infos["responder"]["edits"] == 4
    finally:
        env.close()


def test_episodes_end_for_every_agent_at_once() -> None:
    env = small()
    try:
        env.reset(seed=0)
        for _ in range(4):
            _, _, _, truncations, _ = env.step({a: None for a in env.agents})
        assert all(truncations.values()) and env.agents == []
        with pytest.raises(EnvError, match="before reset"):
            env.step({})
    finally:
        env.close()
