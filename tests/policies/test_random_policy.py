from __future__ import annotations

import json

import pytest
from policy_helpers import info, observation

from envs.spaces import EnvAction
from policies import POLICIES, make_policy
from policies.proposers import OPERATOR_LIBRARY, Candidate, OperatorProposer, state_from_observation
from policies.random_policy import RandomPolicy
from selfimprove_rl.prompt import AddLine, DeleteLine, NoOp, SetModel, apply, parse_directives


def _actions(policy: RandomPolicy, count: int, **info_extra: object) -> list[EnvAction]:
    obs = observation("line one\nline two")
    return [policy.act(obs, {**info([]), **info_extra}) for _ in range(count)]


def test_same_seed_same_actions_and_every_action_applies() -> None:
    first, second = _actions(RandomPolicy(seed=5), 40), _actions(RandomPolicy(seed=5), 40)
    assert first == second
    assert first != _actions(RandomPolicy(seed=6), 40)
    state = state_from_observation(observation("line one\nline two"))
    for action in first:
        apply(state, action.edits)
    kinds = {type(a.edits[0]) for a in first}
    assert kinds == {AddLine, DeleteLine}, "no model switch when only one model is allowed"


def test_model_switches_only_among_other_allowed_models() -> None:
    actions = _actions(
        RandomPolicy(seed=1, weights=(0, 0, 1)), 10, allowed_models=["sim-large", "sim-small"]
    )
    assert {a.edits[0] for a in actions} == {SetModel(model="sim-small")}
    fixed = _actions(
        RandomPolicy(seed=1, models=["sim-large", "sim-keyword"], weights=(0, 0, 1)), 3
    )
    assert {a.edits[0] for a in fixed} == {SetModel(model="sim-keyword")}


def test_frozen_blocks_are_never_edited() -> None:
    actions = _actions(RandomPolicy(seed=2, frozen_blocks=["general"]), 30)
    assert all(a.edits[0].block == "sop" for a in actions)


def test_state_round_trip_acts_identically() -> None:
    policy = RandomPolicy(seed=9)
    _actions(policy, 3)
    restored = RandomPolicy(seed=0)
    restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert _actions(restored, 10) == _actions(policy, 10)


def test_registered_and_built_by_name() -> None:
    assert POLICIES["random"] == "policies.random_policy:RandomPolicy"
    assert isinstance(make_policy("random", seed=0), RandomPolicy)


def test_operator_proposer_gives_distinct_labelled_candidates() -> None:
    candidates = OperatorProposer(seed=0).propose(observation("a\nb\nc"), {}, k=6)
    assert len({c.key() for c in candidates}) == 6
    for candidate in candidates:
        assert candidate.proposer == "operators"
        if isinstance(candidate.edits[0], AddLine):
            family = candidate.kind.split(":")[1]
            assert candidate.edits[0].text in OPERATOR_LIBRARY[family]
            assert candidate.prompt_tokens > 0
        elif isinstance(candidate.edits[0], DeleteLine):
            assert candidate.prompt_tokens < 0


def test_operator_proposer_rejects_an_empty_library() -> None:
    with pytest.raises(ValueError, match="at least one line"):
        OperatorProposer(library={"x": ()})


def test_candidate_helpers() -> None:
    text = Candidate(edits="BLOCK: sop\nADD: hi", proposer="p", kind="k")
    assert text.directive_text() == "BLOCK: sop\nADD: hi" and text.key() == "p::BLOCK: sop\nADD: hi"
    assert not text.is_no_change() and text.to_action("v3") == EnvAction(
        edits="BLOCK: sop\nADD: hi", base_version="v3", origin="p:k"
    )
    assert Candidate(edits=[NoOp()], proposer="p").is_no_change()
    assert Candidate(edits="no_change", proposer="p").is_no_change()
    edits = Candidate(edits=[AddLine(text="x", block="sop")], proposer="p")
    assert parse_directives(edits.directive_text()) == edits.edits
