"""The Gymnasium spec's step limit matches the env's truncation; info["spend"] is per step."""

from __future__ import annotations

import gymnasium
import pytest

import envs
from envs.factory import make_prompt_env
from envs.program_env import ProgramEnvConfig
from envs.program_factory import make_program_env
from envs.prompt_env import PromptEnvConfig
from envs.spend import NO_SPEND, add_spend
from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.evals.code import ExactMatch
from selfimprove_rl.mimic import load_dataset
from selfimprove_rl.program_data import load_pipeline
from selfimprove_rl.prompt import NoOp
from selfimprove_rl.registry import Registry

COFFEE = "I see you are a person of taste! I like coffee, too."
COFFEE_RULE = f'if input mentions coffee or espresso or latte: respond "{COFFEE}"'
SMALL = load_dataset("coffee_sports", model="sim-keyword", limit=60)


@pytest.mark.parametrize(
    ("env_id", "default"),
    [
        (envs.ENV_ID, PromptEnvConfig().max_steps),
        (envs.LLM_ENV_ID, PromptEnvConfig().max_steps),
        (envs.PROGRAM_ENV_ID, ProgramEnvConfig().max_steps),
        (envs.AGENTS_ENV_ID, ProgramEnvConfig().max_steps),
    ],
)
def test_every_spec_limits_episodes_where_the_env_truncates(env_id: str, default: int) -> None:
    assert gymnasium.spec(env_id).max_episode_steps == default == 20


def _make_kwargs(env_id: str) -> dict[str, object]:
    if env_id == envs.ENV_ID:
        return {"data": SMALL, "evaluators": [ExactMatch(name="exact_match")]}
    return {"data": load_pipeline(model="sim-keyword", limit=40)}


@pytest.mark.parametrize("env_id", [envs.ENV_ID, envs.PROGRAM_ENV_ID])
def test_made_env_truncates_at_the_spec_limit(env_id: str) -> None:
    env = gymnasium.make(env_id, config={"minibatch_size": 4}, **_make_kwargs(env_id))
    try:
        assert env.spec is not None
        assert env.unwrapped.config.max_steps == env.spec.max_episode_steps
    finally:
        env.close()
    env = gymnasium.make(
        env_id,
        config={"minibatch_size": 4, "max_steps": 3},
        max_episode_steps=3,
        **_make_kwargs(env_id),
    )
    try:
        env.reset(seed=0)
        no_op = NoOp() if env_id == envs.ENV_ID else {}  # a program's no-op: no node edits
        truncated = [env.step(no_op)[3] for _ in range(3)]
        assert truncated == [False, False, True]
        assert env.spec is not None and env.spec.max_episode_steps == 3
    finally:
        env.close()


def _env(**config: object):  # type: ignore[no-untyped-def]
    options = {"minibatch_size": 8, "max_steps": 10, **config}
    return make_prompt_env(data=SMALL, evaluators=[ExactMatch(name="exact_match")], config=options)


def test_spend_is_this_steps_and_spend_episode_sums_it() -> None:
    env = _env()
    try:
        _, info = env.reset(seed=0)
        infos = [info]
        assert info["spend"]["requests"] == 8 and info["spend_episode"] == info["spend"]
        infos.append(env.step(f"ADD: {COFFEE_RULE}")[4])
        assert infos[-1]["spend"]["requests"] == 16 and infos[-1]["spend"]["tokens"] > 0
        infos.append(env.step(NoOp())[4])  # nothing replayed
        infos.append(env.step("DEL: 99")[4])  # an invalid edit: nothing replayed
        assert infos[-1]["invalid_edit"] is not None
        assert [i["spend"] for i in infos[-2:]] == [NO_SPEND, NO_SPEND]
        infos.append(env.step(f"ADD: {COFFEE_RULE}")[4])
        total = dict(NO_SPEND)
        for step_info in infos:
            total = add_spend(total, step_info["spend"])
            assert step_info["spend_episode"] == total
        _, again = env.reset(seed=1)
        assert again["spend_episode"] == again["spend"], "a new episode counts from zero"
    finally:
        env.close()


def test_a_refused_step_spends_nothing() -> None:
    env = _env(max_calls=100)
    try:
        env.reset(seed=0)
        env.reserved_calls = 100 - env.usage["calls"] - 3
        _, _, _, truncated, info = env.step(f"ADD: {COFFEE_RULE}")
        assert truncated and info["budget_refusal"] and info["spend"] == NO_SPEND
    finally:
        env.close()


def test_spend_episode_survives_a_restore(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def make():  # type: ignore[no-untyped-def]
        return make_prompt_env(
            data=SMALL,
            evaluators=[ExactMatch(name="exact_match")],
            config={"minibatch_size": 8, "max_steps": 10},
            registry=Registry(tmp_path / "versions.jsonl"),
            cache=ResponseCache(tmp_path / "cache.sqlite"),
        )

    first = make()
    first.reset(seed=2)
    info = first.step(f"ADD: {COFFEE_RULE}")[4]
    saved = first.state_dict()
    first.close()
    second = make()
    _, restored = second.reset(options={"restore": saved})
    assert restored["spend"] == NO_SPEND, "re-scoring from the cache is not spend"
    assert restored["spend_episode"] == info["spend_episode"]
    second.close()


def test_program_env_spend_is_per_step() -> None:
    env = make_program_env(
        data=load_pipeline(model="sim-keyword", limit=40), config={"minibatch_size": 4}
    )
    try:
        _, info = env.reset(seed=0)
        edit = env.step('NODE: router\nADD: if input mentions refund: respond "billing"')[4]
        noop = env.step({})[4]
        assert edit["spend"]["requests"] > 0 and noop["spend"] == NO_SPEND
        assert noop["spend_episode"] == add_spend(info["spend"], edit["spend"])
    finally:
        env.close()
