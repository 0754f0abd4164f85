from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from proposer_helpers import COFFEE_RULE, ELSE_RULE, NEUTRAL, ScriptedProposer, drive, small_env

from envs.prompt_env import PromptEnv
from policies.population import (
    PopulationPolicy,
    edits_between,
    merge_states,
    nearest_common_ancestor,
    pareto_front,
    sample_parent,
)
from policies.proposers import Candidate
from selfimprove_rl.prompt import Block, PromptState, apply


@pytest.fixture
def env() -> Iterator[PromptEnv]:
    environment = small_env()
    yield environment
    environment.close()


# ---------------------------------------------------------------- the Pareto front
def test_front_keeps_every_instance_winner_and_counts_wins() -> None:
    table = {
        "a": {"s1": 1.0, "s2": 0.0, "s3": 0.0, "s4": 1.0},
        "b": {"s1": 0.0, "s2": 1.0, "s3": 1.0, "s4": 0.0},
        "c": {"s1": 0.5, "s2": 0.5, "s3": 0.5, "s4": 0.5},
    }
    assert pareto_front(table) == {"a": 2, "b": 2}


def test_a_member_whose_wins_are_all_shared_is_dominated() -> None:
    table = {
        "a": {"s1": 1.0, "s2": 1.0, "s3": 0.2},
        "b": {"s1": 1.0, "s2": 0.0, "s3": 0.2},
        "c": {"s1": 0.0, "s2": 0.0, "s3": 0.9},
    }
    # b wins only s1, which a also wins: b is dominated; a and c each keep an instance.
    assert pareto_front(table) == {"a": 2, "c": 1}


def test_exact_ties_keep_one_winner_the_earlier_or_stronger() -> None:
    table = {"a": {"s1": 1.0, "s2": 1.0}, "b": {"s1": 1.0, "s2": 1.0}}
    assert pareto_front(table) == {"a": 2}
    weaker = {"a": {"s1": 1.0, "s2": 1.0, "s3": 0.5}, "b": {"s1": 1.0, "s2": 1.0, "s3": 0.1}}
    assert pareto_front(weaker) == {"a": 3}


def test_missing_scores_do_not_compete_and_unshared_objectives_are_ignored() -> None:
    table = {
        "a": {"s1": 0.8, "s2": 0.1},
        "b": {"s1": 0.4, "s3": 1.0},
        "c": {"s2": 0.6, "s4": 1.0},
    }
    # s3 and s4 were scored for one member only: with min_shared=2 they do not count.
    assert pareto_front(table) == {"a": 1, "c": 1}
    assert pareto_front(table, min_shared=1) == {"a": 1, "b": 1, "c": 2}


def test_front_of_empty_or_single_tables() -> None:
    assert pareto_front({}) == {}
    assert pareto_front({"a": {}}) == {}
    assert pareto_front({"a": {"s1": 0.3}}) == {"a": 1}
    assert pareto_front({"a": {"s1": 0.3}, "b": {"s2": 0.9}}) == {"a": 1, "b": 1}


def test_parents_are_drawn_in_proportion_to_wins() -> None:
    rng = np.random.default_rng(0)
    draws = Counter(sample_parent({"a": 3, "b": 1}, rng) for _ in range(4000))
    assert draws["a"] / 4000 == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match="non-empty Pareto front"):
        sample_parent({}, rng)


# ---------------------------------------------------------------- merge
def _state(general: tuple[str, ...], sop: tuple[str, ...], model: str = "m") -> PromptState:
    return PromptState(
        blocks=(Block(name="general", lines=general), Block(name="sop", title="## SOP", lines=sop)),
        model=model,
    )


def test_merge_takes_each_block_from_the_parent_that_changed_it() -> None:
    ancestor = _state(("g",), ("s",))
    first = _state(("g", "g2"), ("s",))
    second = _state(("g",), ("s", "s2"), model="m2")
    merged = merge_states(ancestor, first, second)
    assert merged is not None
    assert merged.block("general").lines == ("g", "g2")
    assert merged.block("sop").lines == ("s", "s2")
    assert merged.block("sop").title == "## SOP"
    assert merged.model == "m2"


def test_merge_conflict_keeps_the_preferred_parent_and_pointless_merges_are_none() -> None:
    ancestor = _state(("g",), ("s",))
    first = _state(("g",), ("s", "mine"))
    second = _state(("g", "theirs"), ("s", "other"))
    merged = merge_states(ancestor, first, second)
    assert merged is not None
    assert merged.block("sop").lines == ("s", "mine")
    assert merged.block("general").lines == ("g", "theirs")
    # second changed only what first also changed: the merge is first itself.
    assert merge_states(ancestor, first, _state(("g",), ("s", "other"))) is None
    # nothing changed in second at all.
    assert merge_states(ancestor, first, ancestor) is None
    other_blocks = PromptState(blocks=(Block(name="sop", lines=("s",)),), model="m")
    assert merge_states(ancestor, first, other_blocks) is None


def test_edits_between_rebuild_the_target() -> None:
    before = _state(("g",), ("s",))
    after = _state(("g", "g2"), ("s",), model="m2")
    edits = edits_between(before, after)
    assert apply(before, edits) == after
    assert edits_between(before, before) == []


def test_nearest_common_ancestor() -> None:
    parents: Mapping[str, str | None] = {"v0": None, "v1": "v0", "v2": "v1", "v3": "v1", "v4": "v0"}
    assert nearest_common_ancestor(parents, "v2", "v3") == "v1"
    assert nearest_common_ancestor(parents, "v2", "v4") == "v0"
    assert nearest_common_ancestor(parents, "v2", "v1") == "v1"
    assert nearest_common_ancestor({"a": None, "b": None}, "a", "b") is None


# ---------------------------------------------------------------- the policy on a real env
class MissingLines(ScriptedProposer):
    """Proposes each (block, line) addition only to parents with no added line yet."""

    def __init__(self, additions: list[tuple[str, str]]) -> None:
        super().__init__([])
        self.additions = additions

    def propose(
        self, observation: Mapping[str, Any], info: Mapping[str, Any], k: int
    ) -> list[Candidate]:
        self.calls.append({"version": observation.get("version"), "k": k})
        blocks = dict(observation["blocks"])
        text = "\n".join(blocks.values())
        if any(directive.removeprefix("ADD: ") in text for _, directive in self.additions):
            return []
        return [
            Candidate(edits=f"BLOCK: {block}\n{directive}", proposer=self.name, kind=block)
            for block, directive in self.additions
        ][:k]


def test_population_accepts_on_the_minibatch_then_evaluates_then_merges() -> None:
    env = small_env(minibatch_size=20)  # 8 samples may hold no coffee line at all
    try:
        _accept_evaluate_merge(env)
    finally:
        env.close()


def _accept_evaluate_merge(env: PromptEnv) -> None:
    proposer = MissingLines([("sop", COFFEE_RULE), ("general", ELSE_RULE)])
    policy = PopulationPolicy(seed=0, proposer=proposer, eval_steps=1, merge_every=2)
    infos = drive(env, policy, steps=6)
    kinds = [entry["kind"] for entry in policy.log]
    assert kinds == ["mutation", "mutation", "merge"]
    assert all(entry["accepted"] for entry in policy.log)
    # Each accepted candidate was replayed once more against the same parent, same version.
    assert [len(entry["rewards"]) for entry in policy.log] == [2, 2, 2]
    first, second, merge = policy.log
    assert first["parent"] == second["parent"] == env.registry.baseline_id
    assert merge["parent"] in (first["version"], second["version"])
    assert policy.pool == [
        env.registry.baseline_id,
        first["version"],
        second["version"],
        merge["version"],
    ]
    merged = env.registry.build(merge["version"]).state
    assert COFFEE_RULE.removeprefix("ADD: ") in merged.block("sop").lines
    assert ELSE_RULE.removeprefix("ADD: ") in merged.block("general").lines
    assert env.registry.build(merge["version"]).parent_id == merge["parent"]
    # The merge scores better than either parent on its minibatches.
    assert all(r > 0 for r in merge["rewards"])
    assert [i["base_version_id"] for i in infos[:4]] == [env.registry.baseline_id] * 4
    assert len(proposer.feedback_log) == 2 and all(ok for _, _, ok in proposer.feedback_log)


def test_population_rejects_what_the_minibatch_does_not_reward(env: PromptEnv) -> None:
    proposer = ScriptedProposer([NEUTRAL])
    policy = PopulationPolicy(seed=0, proposer=proposer, eval_steps=2)
    infos = drive(env, policy, steps=3)
    assert policy.log[0]["accepted"] is False and policy.log[0]["reason"] == "minibatch reward"
    assert policy.pool == [env.registry.baseline_id]
    # Nothing untried is left: the policy asks for no change instead of repeating itself.
    assert [i["directive"] for i in infos[1:]] == ["no_change", "no_change"]


def test_population_budget_and_state_round_trip(env: PromptEnv) -> None:
    proposer = MissingLines([("sop", COFFEE_RULE), ("general", ELSE_RULE)])
    policy = PopulationPolicy(seed=0, proposer=proposer, eval_steps=1, budget_calls=30)
    infos = drive(env, policy, steps=6)
    assert policy.view.calls >= 30
    assert infos[-1]["directive"] == "no_change"
    state = json.loads(json.dumps(policy.state_dict()))
    restored = PopulationPolicy(seed=0, proposer=proposer, eval_steps=1, budget_calls=30)
    restored.load_state_dict(state)
    assert restored.pool == policy.pool and restored.log == policy.log
    assert restored.front() == policy.front()
