"""Each policy drives a real PromptEnv on coffee/sports (simulated model, no key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import gymnasium
import pytest
from scripted_server import ScriptedServer

import envs
from envs.prompt_env import PromptEnv
from policies import make_policy
from policies.base import Transition
from policies.llm_coach import LLMCoachPolicy
from policies.rule_induction import RuleInductionCoach

COFFEE = "I see you are a person of taste! I like coffee, too."


@pytest.fixture
def env() -> Iterator[Any]:
    made = gymnasium.make(
        envs.ENV_ID,
        data="coffee_sports",
        model="sim-large",
        minibatch_size=32,
        max_steps=8,
        target_score=None,
    )
    yield made
    made.close()


def _episode(env: Any, policy: Any, steps: int) -> list[dict[str, Any]]:
    observation, info = env.reset(seed=0)
    policy.reset(observation, info)
    infos = []
    for _ in range(steps):
        action = policy.act(observation, info)
        next_observation, reward, terminated, truncated, info = env.step(action)
        policy.update(
            Transition(observation, action, reward, next_observation, terminated, truncated, info)
        )
        observation = next_observation
        infos.append({**info, "reward": reward})
        if terminated or truncated:
            break
    return infos


@pytest.mark.parametrize(("scaffold_demos", "at_least"), [(0, 0.95), (3, 0.93)])
def test_rule_induction_reaches_high_holdout_in_a_handful_of_steps(
    env: Any, scaffold_demos: int, at_least: float
) -> None:
    # sim-large answers one holdout sample (of 49) less well with the default first candidate
    # (rules and 3 demos per reply), which did twice as well as rules alone on a real model.
    coach = make_policy("rule_induction", seed=0, scaffold_demos=scaffold_demos)
    infos = _episode(env, coach, steps=4)
    base: PromptEnv = env.unwrapped
    holdout, _ = base.score_version(base.current_version_id, "holdout")
    assert holdout.aggregate >= at_least, (holdout, coach.change_log)
    accepted = [e for e in coach.change_log if e["accepted"]]
    assert 1 <= len(accepted) <= 4 and all(e["reward"] > 0 for e in accepted)
    assert all(i["invalid_edit"] is None for i in infos)
    prompt = base.registry.build(base.current_version_id).state.render()
    assert COFFEE in prompt


def test_a_restored_rule_coach_acts_identically_mid_episode(env: Any) -> None:
    coach = RuleInductionCoach(seed=0)
    observation, info = env.reset(seed=1)
    coach.reset(observation, info)
    action = coach.act(observation, info)
    observation2, reward, terminated, truncated, info2 = env.step(action)
    coach.update(
        Transition(observation, action, reward, observation2, terminated, truncated, info2)
    )
    restored = RuleInductionCoach(seed=5)
    restored.load_state_dict(json.loads(json.dumps(coach.state_dict())))
    assert restored.act(observation2, info2) == coach.act(observation2, info2)


def test_random_policy_runs_with_valid_edits_only(env: Any) -> None:
    infos = _episode(env, make_policy("random", seed=3), steps=4)
    assert len(infos) == 4
    assert all(i["invalid_edit"] is None for i in infos)


def test_llm_coach_edits_the_env_through_a_scripted_server(env: Any) -> None:
    good = json.dumps(
        {
            "target_block": "sop",
            "directives": [f'ADD: if input is about coffee or espresso: respond "{COFFEE}"'],
            "rationale": "Route coffee.",
        }
    )
    with ScriptedServer([good, "not json", "", "{}"]) as server:
        coach = LLMCoachPolicy(seed=0, model="coach", base_url=server.base_url)
        infos = _episode(env, coach, steps=2)
    assert infos[0]["accepted"] and infos[0]["reward"] > 0.2
    assert coach.failure_count == 1 and infos[1]["reward"] == 0.0
    assert [e["accepted"] for e in coach.proposer.change_log] == [True]


def test_random_policy_switches_among_the_models_the_env_allows() -> None:
    env = gymnasium.make(
        envs.ENV_ID,
        data="coffee_sports",
        model="sim-large",
        minibatch_size=8,
        allowed_models=("sim-large", "sim-small"),
        target_score=None,
    )
    try:
        infos = _episode(env, make_policy("random", seed=0, weights=(0.0, 0.0, 1.0)), steps=2)
    finally:
        env.close()
    assert infos[0]["allowed_models"] == ["sim-large", "sim-small"]
    assert all(i["invalid_edit"] is None and i["directive"] == "MODEL: sim-small" for i in infos)
