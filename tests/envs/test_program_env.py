from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.factory import make_prompt_env
from envs.program_env import ProgramEnv
from envs.program_factory import make_program_env
from envs.program_spaces import ProgramAction
from selfimprove_rl.errors import EnvError
from selfimprove_rl.program_data import load_pipeline
from selfimprove_rl.program_state import NodeEdit, ProgramState
from selfimprove_rl.prompt import AddLine, DeleteLine

FIXTURE = Path(__file__).parents[1] / "fixtures" / "checkpoint_v1_coffee.json"
CHECKPOINT = load_pipeline(model="sim-keyword", limit=60)
REPLIES = {s.node_references["router"]: s.reference for s in CHECKPOINT.samples}
ROUTER_RULES = {
    "billing": "refund, charged, charge, money, invoice, payment, card, billing",
    "shipping": "package, parcel, delivery, ship, shipping, tracking, arrived, order",
    "account": "password, log, login, account, email, profile, sign",
}


def router_edits() -> str:
    lines = [
        f'ADD: if input mentions {terms}: respond "{label}"'
        for label, terms in ROUTER_RULES.items()
    ]
    return "NODE: router\n" + "\n".join([*lines, 'ADD: else: respond "other"'])


def responder_edits() -> str:
    lines = [
        f'ADD: if input mentions {label}: respond "{reply}"' for label, reply in REPLIES.items()
    ]
    return "NODE: responder\n" + "\n".join(lines)


def small(**config: object) -> ProgramEnv:
    options = {"minibatch_size": None, "max_steps": 6, **config}
    return make_program_env(data=CHECKPOINT, config=options)


@pytest.fixture
def env() -> Iterator[ProgramEnv]:
    environment = small()
    yield environment
    environment.close()


def test_registered_program_env_passes_check_env() -> None:
    env = gymnasium.make(envs.PROGRAM_ENV_ID)
    try:
        check_env(env.unwrapped, skip_render_check=True)
        unwrapped = env.unwrapped
        assert isinstance(unwrapped, ProgramEnv)
        assert unwrapped.program.order == ("router", "responder")
        assert unwrapped.models == ("sim-large",)
    finally:
        env.close()


def test_observation_holds_every_node_and_node_scores(env: ProgramEnv) -> None:
    observation, info = env.reset(seed=0)
    assert set(observation["nodes"]) == {"router", "responder"}
    assert "Reply with the label" in observation["nodes"]["router"]["blocks"]["sop"]
    assert observation["scores"].shape == (2,) and observation["node_scores"].shape == (1,)
    assert env.observation_space.contains(observation)
    assert info["node_examples"]["router"][0]["reference"] in REPLIES
    assert info["node_examples"]["responder"][0]["reference"] in REPLIES.values()


def test_single_node_edits_alone_cannot_bootstrap(env: ProgramEnv) -> None:
    env.reset(seed=0)
    _, reward, _, _, info = env.step(router_edits())
    assert reward == 0.0 and info["end_to_end_reward"] == 0.0
    assert info["node_rewards"]["router"] > 0.5
    assert not info["accepted"]
    _, reward, _, _, info = env.step(responder_edits())
    assert reward < 0.1 and info["node_rewards"] == {"router": 0.0}


def test_a_joint_edit_bootstraps_and_credits_each_node(env: ProgramEnv) -> None:
    env.reset(seed=0)
    joint = router_edits() + "\n" + responder_edits()
    _, reward, _, _, info = env.step(joint)
    assert reward > 0.5 and info["accepted"]
    assert info["end_to_end_reward"] == reward
    assert info["node_rewards"]["router"] == pytest.approx(info["node_scores"]["router"])
    assert info["directive"].startswith("NODE: router\nADD:")
    state = env.registry.build(info["version_id"]).state
    assert isinstance(state, ProgramState) and len(state.node("responder").block("sop").lines) == 5


def test_bounded_ties_let_one_node_wait_for_the_other() -> None:
    env = small(tie_moves=1)
    try:
        env.reset(seed=0)
        _, reward, _, _, info = env.step(router_edits())
        assert reward == 0.0 and info["accepted"] and info["tie_move"]
        _, _, _, _, info = env.step({"router": "ADD: Be brief."})
        assert not info["accepted"], "a second tie in a row exceeds the bound"
        _, reward, _, _, info = env.step(responder_edits())
        assert reward > 0.5 and info["accepted"] and not info["tie_move"]
    finally:
        env.close()


def test_node_evals_shape_the_reward() -> None:
    env = small(node_shaping=0.5)
    try:
        env.reset(seed=0)
        _, reward, _, _, info = env.step(router_edits())
        assert info["end_to_end_reward"] == 0.0
        assert reward == pytest.approx(0.5 * info["node_rewards"]["router"])
        assert info["accepted"]
    finally:
        env.close()


def test_every_action_form_is_accepted(env: ProgramEnv) -> None:
    env.reset(seed=0)
    edit = NodeEdit(node="responder", edit=AddLine(text="Be brief."))
    for action in (
        edit,
        [edit],
        {"responder": [AddLine(text="Be kind.")]},
        {"responder": "ADD: Be calm."},
        ProgramAction(edits=[edit], base_version=env.registry.baseline_id, origin="t"),
    ):
        assert env.action_space.contains(action)
        _, _, _, _, info = env.step(action)
        assert info["invalid_edit"] is None, info["invalid_edit"]
    with pytest.raises(EnvError, match="Expects node edits"):
        env.step(42)


def test_invalid_node_edits_are_penalised_not_raised() -> None:
    env = small(invalid_edit_penalty=0.25, frozen_nodes=("responder",))
    try:
        env.reset(seed=0)
        calls = env.usage["calls"]
        _, reward, _, _, info = env.step("NODE: rooter\nADD: x")
        assert reward == -0.25 and info["invalid_edit"]["reason"] == "unknown_node"
        _, reward, _, _, info = env.step([NodeEdit(node="responder", edit=AddLine(text="x"))])
        assert info["invalid_edit"]["reason"] == "frozen_node"
        _, _, _, _, info = env.step([NodeEdit(node="router", edit=DeleteLine(line=7))])
        assert re.match(r"node 'router': Line 7", info["invalid_edit"]["message"])
        _, _, _, _, info = env.step([AddLine(text="x")])
        assert info["invalid_edit"]["reason"] == "unknown_node"
        assert env.usage["calls"] == calls, "invalid edits cost no model call"
    finally:
        env.close()


def test_scores_per_split_are_end_to_end(env: ProgramEnv) -> None:
    env.reset(seed=0)
    _, _, _, _, info = env.step(router_edits() + "\n" + responder_edits())
    score, table = env.score_version(info["version_id"], "test")
    assert score.aggregate == table.aggregate() > 0.5
    assert set(score.per_eval) == {"similarity"}
    assert "NODE" not in env.version_diff(env.registry.baseline_id, info["version_id"])
    assert "+if input mentions billing" in env.version_diff(
        env.registry.baseline_id, info["version_id"]
    )


def test_a_checkpoint_written_before_programs_runs_in_both_envs() -> None:
    prompt_env = make_prompt_env(data=FIXTURE, model="sim-keyword", minibatch_size=8)
    program_env = make_program_env(data=str(FIXTURE), model="sim-keyword", minibatch_size=8)
    try:
        coffee = "I see you are a person of taste! I like coffee, too."
        rule = f'if input mentions coffee: respond "{coffee}"'
        prompt_env.reset(seed=0)
        _, reward, _, _, _ = prompt_env.step(f"ADD: {rule}")
        assert reward > 0
        observation, _ = program_env.reset(seed=0)
        assert list(observation["nodes"]) == ["call"]
        _, program_reward, _, _, info = program_env.step(f"ADD: {rule}")
        assert program_reward == pytest.approx(reward)
        assert info["directive"].startswith("NODE: call")
        assert np.isfinite(program_reward)
    finally:
        prompt_env.close()
        program_env.close()
