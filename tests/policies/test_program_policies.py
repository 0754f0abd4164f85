from __future__ import annotations

import pytest

from envs.multi_agent import make_team_env
from envs.program_factory import make_program_env
from envs.spaces import EnvAction
from policies.base import Transition
from policies.catalog import make_policy
from policies.output_rules import OutputRuleProposer, ProposerCoach
from policies.program_adapter import AgentTeam, NodeAgent, ProgramCoach, node_view, to_node_action
from policies.random_policy import RandomPolicy
from selfimprove_rl.errors import PolicyError
from selfimprove_rl.program_data import load_pipeline
from selfimprove_rl.program_state import NodeEdit
from selfimprove_rl.prompt import AddLine, NoOp

CHECKPOINT = load_pipeline(model="sim-keyword", limit=60)


def rows(*pairs: tuple[str, str], score: float = 0.0) -> list[dict[str, object]]:
    return [{"input": i, "output": "?", "reference": r, "score": score} for i, r in pairs]


def test_keyword_rules_use_only_precise_terms_and_go_before_the_fallback() -> None:
    proposer = OutputRuleProposer()
    proposer.remember(
        {"examples": rows(("refund my order", "billing"), ("late order", "shipping"))}
    )
    examples = rows(("refund please", "billing"), ("refund now", "billing"))
    observation = {"blocks": {"sop": 'else: respond "other"'}}
    candidates = proposer.propose(observation, {"examples": examples}, k=5)
    rule = candidates[0]
    assert rule.kind == "mentions"
    assert rule.directive_text() == 'BLOCK: sop\nADD 1: if input mentions refund: respond "billing"'
    assert {c.kind for c in candidates} == {"mentions", "example"}, "the block has a fallback"
    assert proposer.propose(observation, {"examples": rows(("x", "y"), score=1.0)}, k=5) == []
    restored = OutputRuleProposer()
    restored.load_state_dict(proposer.state_dict())
    assert restored.memory == proposer.memory


def test_the_fallback_goes_to_the_reference_rules_describe_worst() -> None:
    proposer = OutputRuleProposer()
    examples = rows(
        ("refund please", "billing"),
        ("refund now", "billing"),
        ("great shop", "other"),
        ("nice font", "other"),
    )
    candidates = proposer.propose({"blocks": {"sop": ""}}, {"examples": examples}, k=5)
    fallback = next(c for c in candidates if c.kind == "else")
    assert fallback.directive_text().endswith('ADD: else: respond "other"')


def test_proposer_coach_tries_each_candidate_once_per_version() -> None:
    coach = ProposerCoach(seed=0)
    observation = {"blocks": {"sop": ""}, "version": "v0001"}
    info = {"examples": rows(("refund please", "billing"), ("refund now", "billing"))}
    seen = set()
    for _ in range(4):
        action = coach.act(observation, info)
        assert isinstance(action, EnvAction)
        seen.add(str(action.edits))
    assert any("no_op" in s for s in seen) and len(seen) >= 3
    twin = ProposerCoach(seed=0)
    twin.load_state_dict(coach.state_dict())
    assert twin.tried == coach.tried
    assert make_policy("proposer_coach", seed=1).proposer.name == "output_rules"


def test_single_call_actions_are_addressed_to_the_node() -> None:
    edit = AddLine(text="x")
    assert to_node_action("router", edit)[0] == [NodeEdit(node="router", edit=edit)]
    assert to_node_action("router", "ADD: x")[0] == [NodeEdit(node="router", edit=edit)]
    assert to_node_action("router", [NoOp()])[0] is None
    wrapped = EnvAction(edits=[edit], base_version="v0003", origin="me")
    assert to_node_action("router", wrapped)[1:] == ("v0003", "me")
    with pytest.raises(PolicyError, match="single-call action"):
        to_node_action("router", 42)


def test_node_views_look_like_single_call_observations() -> None:
    env = make_program_env(data=CHECKPOINT, minibatch_size=8)
    try:
        observation, info = env.reset(seed=0)
        view, view_info = node_view(observation, info, "router")
        assert set(view) == {"prompt", "blocks", "demos", "model", "version", "scores"}
        assert view_info["examples"] == info["node_examples"]["router"]
        with pytest.raises(PolicyError, match="no node 'nope'"):
            node_view(observation, info, "nope")
        # an unchanged single-call policy acts on a node
        agent = NodeAgent("router", RandomPolicy(seed=0))
        edits, _, origin = agent.act(observation, info)
        assert edits is None or all(e.node == "router" for e in edits)
        assert origin.startswith("operators")
    finally:
        env.close()


def test_one_coach_with_joint_edits_bootstraps_the_pipeline() -> None:
    env = make_program_env(data=CHECKPOINT, minibatch_size=None, observe_on_no_op=True)
    coach = ProgramCoach(seed=0, mode="joint")
    try:
        observation, info = env.reset(seed=0)
        coach.reset(observation, info)
        rewards = []
        for _ in range(6):
            action = coach.act(observation, info)
            following, reward, terminated, truncated, info = env.step(action)
            coach.update(
                Transition(observation, action, reward, following, terminated, truncated, info)
            )
            observation = following
            rewards.append(reward)
        current = env.registry.build(env.current_version_id).state
        baseline = env.registry.build(env.registry.baseline_id).state
        assert sum(r for r in rewards if r > 0) >= 0.3, rewards
        assert all(current.node(n) != baseline.node(n) for n in ("router", "responder"))
        restored = ProgramCoach(seed=0, mode="joint")
        restored.load_state_dict(coach.state_dict())
        restored.reset(observation, info)
        assert set(restored.agents) == {"router", "responder"}
    finally:
        env.close()


def test_a_team_of_agents_learns_from_its_own_rewards() -> None:
    env = make_team_env(data=CHECKPOINT, config={"minibatch_size": None, "max_steps": 5})
    team = AgentTeam(seed=0)
    try:
        observation, info = env.reset(seed=0)
        team.reset(observation, info)
        action = team.act(observation, info)
        assert set(action) == {"router", "responder"}
        following, reward, terminated, truncated, info = env.step(action)
        team.update(Transition(observation, action, reward, following, terminated, truncated, info))
        agents = info["agents"]
        assert set(agents) == {"router", "responder"}
        assert all("difference_reward" in a and "reward" in a for a in agents.values())
        assert env.registry is env.program_env.registry
        with pytest.raises(PolicyError, match="Expects mode"):
            ProgramCoach(mode="solo")  # type: ignore[arg-type]
    finally:
        env.close()
