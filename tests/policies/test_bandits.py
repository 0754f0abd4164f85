from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from proposer_helpers import (
    COFFEE_RULE,
    ELSE_RULE,
    HARMFUL,
    NEUTRAL,
    ScriptedProposer,
    drive,
    small_env,
)

from envs.prompt_env import PromptEnv
from policies.bandits import (
    Arm,
    BudgetWarning,
    SuccessiveHalvingPolicy,
    ThompsonPolicy,
    UCB1Policy,
    minimum_round_pulls,
    successive_halving_schedule,
    ucb1_index,
)
from policies.proposers import Candidate
from selfimprove_rl.errors import PolicyError


@pytest.fixture
def env() -> Iterator[PromptEnv]:
    environment = small_env()
    yield environment
    environment.close()


def _arm(*rewards: float) -> Arm:
    return Arm(candidate=Candidate(edits="ADD: x", proposer="t"), rewards=list(rewards))


@pytest.mark.parametrize(
    ("arms", "budget", "expected"),
    [
        (8, 48, [(8, 2), (4, 4), (2, 8)]),
        (4, 16, [(4, 2), (2, 4)]),
        (5, 30, [(5, 2), (3, 3), (2, 5)]),
        (2, 7, [(2, 3)]),
        (1, 5, [(1, 5)]),
        (4, 0, [(4, 1), (2, 1)]),
    ],
)
def test_successive_halving_schedule_halves_arms_and_grows_pulls(
    arms: int, budget: int, expected: list[tuple[int, int]]
) -> None:
    schedule = successive_halving_schedule(arms, budget)
    assert [(r.arms, r.pulls_per_arm) for r in schedule] == expected
    if budget >= minimum_round_pulls(arms):
        assert sum(r.arms * r.pulls_per_arm for r in schedule) <= budget


def test_schedule_needs_an_arm_and_counts_its_minimum() -> None:
    with pytest.raises(ValueError, match=re.escape("Expects at least one arm, got 0.")):
        successive_halving_schedule(0, 10)
    assert minimum_round_pulls(8) == 8 + 4 + 2
    assert minimum_round_pulls(1) == 1


def test_ucb1_index_is_mean_plus_bonus_and_infinite_when_untried() -> None:
    assert ucb1_index(_arm(), 5, 0.5) == math.inf
    expected = 0.2 + 0.5 * math.sqrt(2 * math.log(8) / 2)
    assert ucb1_index(_arm(0.1, 0.3), 8, 0.5) == pytest.approx(expected)


def test_ucb1_round_measures_every_arm_against_one_base_and_commits_the_best(
    env: PromptEnv,
) -> None:
    proposer = ScriptedProposer([NEUTRAL, COFFEE_RULE, ELSE_RULE, HARMFUL])
    policy = UCB1Policy(seed=0, proposer=proposer, arms=4, round_pulls=8, round_calls=10**6)
    infos = drive(env, policy, steps=8)
    baseline = env.registry.baseline_id
    assert all(i["base_version_id"] == baseline for i in infos)
    # Untried arms first, in the proposer's order.
    assert [i["action"].edits for i in infos[:4]] == [c.edits for c in proposer.candidates]
    (round_log,) = policy.history
    pulls = [a["pulls"] for a in round_log["arms"]]
    assert sum(pulls) == 8 and min(pulls) >= 1
    rewards_by_version: dict[str, list[float]] = {}
    for info in infos:
        rewards_by_version.setdefault(info["version_id"], []).append(info["reward"])
    for arm in round_log["arms"]:
        assert arm["mean"] == pytest.approx(sum(rewards_by_version[arm["version"]]) / arm["pulls"])
    best = max(round_log["arms"], key=lambda a: a["mean"])
    assert best["directive"] in (COFFEE_RULE, ELSE_RULE)
    assert round_log["winner"] == best["version"] == policy.base
    accepted = [d for d, _, ok in proposer.feedback_log if ok]
    assert accepted == [best["directive"]] and len(proposer.feedback_log) == 4
    # The next round branches from the winner.
    following = drive_more(env, policy, infos)
    assert following["base_version_id"] == best["version"]


def drive_more(
    env: PromptEnv, policy: UCB1Policy, infos: list[dict[str, object]]
) -> dict[str, object]:
    from policies.base import Transition

    last = infos[-1]
    observation = env._observation()
    action = policy.act(observation, dict(last))
    following, reward, terminated, truncated, info = env.step(action)
    policy.update(Transition(observation, action, reward, following, terminated, truncated, info))
    return info


def test_calls_counted_from_info_match_what_the_env_sent(env: PromptEnv) -> None:
    proposer = ScriptedProposer([COFFEE_RULE, ELSE_RULE, NEUTRAL])
    policy = ThompsonPolicy(seed=1, proposer=proposer, arms=3, round_pulls=4, round_calls=10**6)
    drive(env, policy, steps=10)
    assert policy.view.calls == env.usage["replay_calls"] > 0


def test_budget_calls_stops_spending_and_warns_when_smaller_than_a_round(env: PromptEnv) -> None:
    proposer = ScriptedProposer([COFFEE_RULE, ELSE_RULE, NEUTRAL, HARMFUL])
    policy = UCB1Policy(seed=0, proposer=proposer, arms=4, budget_calls=40)
    with pytest.warns(BudgetWarning, match="smaller than a single round"):
        infos = drive(env, policy, steps=12)
    spent_at = next(n for n, i in enumerate(infos) if i["directive"] == "no_change")
    assert policy.view.calls >= 40
    sent = env.usage["calls"]
    drive_more(env, policy, infos)
    assert env.usage["calls"] == sent  # no_change on a cached base costs nothing
    assert all(i["directive"] == "no_change" for i in infos[spent_at:])


def test_round_too_small_for_one_pass_warns() -> None:
    policy = UCB1Policy(seed=0, proposer=ScriptedProposer([NEUTRAL]), arms=4, round_calls=10)
    observation = {"blocks": {"sop": ""}, "model": "m", "version": "v0", "scores": [0.0]}
    with pytest.warns(BudgetWarning, match=re.escape("round_calls=10 cannot pull each of 4 arms")):
        policy.reset(observation, {"minibatch": [f"s{i}" for i in range(8)]})


def test_thompson_gaussian_posterior_is_the_conjugate_update() -> None:
    policy = ThompsonPolicy(seed=0, proposer="operators", prior_sigma=0.3)
    mean, spread = policy.gaussian_posterior(_arm(0.2, 0.4), sigma=0.1)
    precision = 1 / 0.09 + 2 / 0.01
    assert mean == pytest.approx((0.6 / 0.01) / precision)
    assert spread == pytest.approx(math.sqrt(1 / precision))
    beta = ThompsonPolicy(seed=0, proposer="operators", posterior="beta")
    assert beta.posterior_mean(_arm(0.1, -0.2, 0.3)) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="posterior 'gaussian' or 'beta'"):
        ThompsonPolicy(seed=0, proposer="operators", posterior="uniform")  # type: ignore[arg-type]


@pytest.mark.parametrize("posterior", ["gaussian", "beta"])
def test_thompson_is_seeded_and_prefers_the_better_arm(posterior: str) -> None:
    runs = []
    for _ in range(2):
        environment = small_env()
        try:
            proposer = ScriptedProposer([NEUTRAL, COFFEE_RULE])
            policy = ThompsonPolicy(
                seed=3,
                proposer=proposer,
                arms=2,
                posterior=posterior,
                round_pulls=10,
                round_calls=10**6,
            )
            infos = drive(environment, policy, steps=10)
            runs.append([i["directive"] for i in infos])
        finally:
            environment.close()
    assert runs[0] == runs[1]
    (round_log,) = policy.history
    neutral, coffee = round_log["arms"]
    assert coffee["pulls"] > neutral["pulls"]
    assert round_log["winner"] == coffee["version"]


def test_successive_halving_spends_the_round_on_the_survivors(env: PromptEnv) -> None:
    proposer = ScriptedProposer([NEUTRAL, COFFEE_RULE, HARMFUL, ELSE_RULE])
    policy = SuccessiveHalvingPolicy(
        seed=0, proposer=proposer, arms=4, round_pulls=12, round_calls=10**6
    )
    drive(env, policy, steps=10)  # the schedule's 4 + 2 * 3 pulls
    assert [(r.arms, r.pulls_per_arm) for r in policy.schedule] == [(4, 1), (2, 3)]
    (round_log,) = policy.history
    pulls = {a["directive"]: a["pulls"] for a in round_log["arms"]}
    assert pulls == {NEUTRAL: 1, COFFEE_RULE: 4, HARMFUL: 1, ELSE_RULE: 4}
    means = {a["directive"]: a["mean"] for a in round_log["arms"]}
    winner = max((COFFEE_RULE, ELSE_RULE), key=lambda d: means[d])
    assert policy.base == next(a["version"] for a in round_log["arms"] if a["directive"] == winner)


def test_successive_halving_warns_when_a_round_cannot_pull_every_arm() -> None:
    policy = SuccessiveHalvingPolicy(seed=0, proposer="operators", arms=8)
    with pytest.warns(BudgetWarning, match="fewer than the 14 a round over 8 arms needs"):
        schedule = policy.plan(8, budget_pulls=6)
    assert [(r.arms, r.pulls_per_arm) for r in schedule] == [(8, 1), (4, 1), (2, 1)]


def test_invalid_arm_is_retired_after_one_pull(env: PromptEnv) -> None:
    proposer = ScriptedProposer(["DEL: 99", COFFEE_RULE])
    policy = UCB1Policy(seed=0, proposer=proposer, arms=2, round_pulls=5, round_calls=10**6)
    infos = drive(env, policy, steps=5)
    assert sum(1 for i in infos if i["invalid_edit"]) == 1
    assert (proposer.candidates[0].directive_text(), 0.0, False) in proposer.feedback_log


@pytest.mark.parametrize("policy_class", [UCB1Policy, ThompsonPolicy, SuccessiveHalvingPolicy])
def test_state_dict_is_json_and_round_trips(env: PromptEnv, policy_class: type) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        policy = policy_class(seed=0, proposer="operators", arms=3, round_pulls=4)
        drive(env, policy, steps=6)
        state = json.loads(json.dumps(policy.state_dict()))
        restored = policy_class(seed=0, proposer="operators", arms=3, round_pulls=4)
        restored.load_state_dict(state)
    assert json.loads(json.dumps(restored.state_dict())) == state
    observation = env._observation()
    assert restored.act(observation, {}) == policy.act(observation, {})


def test_a_combined_proposer_interleaves_and_routes_feedback() -> None:
    from policies.catalog import make_proposer
    from policies.proposers import CombinedProposer

    class Fixed:
        def __init__(self, name: str, texts: list[str]) -> None:
            self.name, self.texts, self.heard = name, texts, []

        def propose(self, observation: Any, info: Any, k: int) -> list[Candidate]:
            return [Candidate(edits=f"ADD: {t}", proposer=self.name) for t in self.texts[:k]]

        def feedback(self, candidate: Candidate, reward: float, accepted: bool, info: Any) -> None:
            self.heard.append(candidate.directive_text())

    first, second = Fixed("a", ["x", "y", "z"]), Fixed("b", ["x", "w"])
    combined = CombinedProposer([first, second])
    found = combined.propose({}, {}, k=4)
    assert [c.directive_text() for c in found] == ["ADD: x", "ADD: w", "ADD: y", "ADD: z"]
    combined.feedback(found[1], 0.1, True, {})
    assert (first.heard, second.heard) == ([], ["ADD: w"])
    built = make_proposer("operators+rule_induction", seed=0, kwargs={"rule_induction": {}})
    assert built.name == "operators+rule_induction"
    with pytest.raises(PolicyError, match="keyed by the combined proposers"):
        make_proposer("operators+rule_induction", kwargs={"max_demos": 3})
