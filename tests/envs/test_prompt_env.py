from __future__ import annotations

import re
from collections.abc import Iterator

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import RecordEpisodeStatistics, TimeLimit

import envs
from envs import EnvAction
from envs.factory import make_prompt_env
from envs.prompt_env import PromptEnv, PromptEnvConfig
from selfimprove_rl.backend import Backend
from selfimprove_rl.errors import EnvError
from selfimprove_rl.evals.code import ExactMatch
from selfimprove_rl.mimic import load_dataset
from selfimprove_rl.prompt import AddLine, DeleteLine, NoOp
from selfimprove_rl.simulated.faults import FaultPlan

COFFEE = "I see you are a person of taste! I like coffee, too."
SPORTS = "Well, I don't like sports."
COFFEE_RULE = f'if input mentions coffee or espresso or latte: respond "{COFFEE}"'
ELSE_RULE = f'else: respond "{SPORTS}"'


def _env(**config: object) -> PromptEnv:
    """A small, fast env: 60 samples, keyword model, exact-match eval (no embeddings)."""
    checkpoint = load_dataset("coffee_sports", model="sim-keyword", limit=60)
    options = {"minibatch_size": 8, "max_steps": 5, **config}
    return make_prompt_env(
        data=checkpoint, evaluators=[ExactMatch(name="exact_match")], config=options
    )


@pytest.fixture
def env() -> Iterator[PromptEnv]:
    environment = _env()
    yield environment
    environment.close()


def test_registered_env_passes_check_env() -> None:
    env = gymnasium.make(envs.ENV_ID)
    try:
        check_env(env.unwrapped)
        assert env.spec is not None and env.spec.nondeterministic is False
    finally:
        env.close()


def test_llm_env_is_registered_nondeterministic() -> None:
    spec = gymnasium.spec(envs.LLM_ENV_ID)
    assert spec.nondeterministic is True
    assert spec.kwargs["backend"] == {"kind": "openai"}


def test_small_env_passes_check_env(env: PromptEnv) -> None:
    check_env(env)


def test_reward_is_the_paired_delta_on_one_minibatch(env: PromptEnv) -> None:
    env.reset(seed=3)
    _, reward, _, _, info = env.step(f"ADD: {COFFEE_RULE}")
    assert reward == pytest.approx(info["scores"]["aggregate"] - info["base_scores"]["aggregate"])
    minibatch = [env.checkpoint.sample(i) for i in info["minibatch"]]
    coffee_share = np.mean([s.reference == COFFEE for s in minibatch])
    # The base (placeholder) matches nothing; the rule matches the coffee lines it names.
    assert info["base_scores"]["exact_match"] == 0.0
    assert 0.0 < info["scores"]["exact_match"] <= coffee_share
    assert info["accepted"] is True and info["current_version_id"] == info["version_id"]
    assert set(info["sample_scores"]) == set(info["minibatch"])


def test_spend_in_info_counts_requests_and_usage_counts_calls(env: PromptEnv) -> None:
    env.reset(seed=0)
    sent_before = env.usage["calls"]
    _, _, _, _, info = env.step(f"ADD: {COFFEE_RULE}")
    assert info["spend"]["requests"] == 16
    # The base was replayed at reset on the same minibatch seed path only partly; at most 16 sent.
    assert 0 < env.usage["calls"] - sent_before <= 16
    sent = env.usage["calls"]
    env.reset(seed=0)
    _, _, _, _, again = env.step(f"ADD: {COFFEE_RULE}")
    assert env.usage["calls"] == sent  # every request was served by the cache
    assert again["spend"] == info["spend"]


@pytest.mark.parametrize(
    ("action", "reason", "message"),
    [
        (
            "DEL: 9",
            "line_out_of_range",
            "Line 9 is out of range for block 'sop'; valid lines: 1..1.",
        ),
        ("SHOUT: hello", "unparseable_directive", "unknown keyword 'SHOUT'"),
        ("DEL: ²", "unparseable_directive", "DEL needs a line number"),
        ("DEL: " + "9" * 5000, "unparseable_directive", "DEL needs a line number"),
        ("ADD: caf\ud800", "invalid_text", "holds a lone surrogate"),
        ("ADD: ## Rules", "heading_text", "looks like a markdown heading"),
        (AddLine(text="x", block="nope"), "unknown_block", "Unknown block 'nope'."),
        ("MODEL: gpt-9", "unknown_model", "Unknown model 'gpt-9'."),
    ],
)
def test_invalid_edit_is_not_a_crash(
    env: PromptEnv, action: object, reason: str, message: str
) -> None:
    observation, _ = env.reset(seed=0)
    after, reward, terminated, truncated, info = env.step(action)
    assert reward == 0.0
    assert info["invalid_edit"]["reason"] == reason
    assert message in info["invalid_edit"]["message"]
    assert after["prompt"] == observation["prompt"]
    assert info["version_id"] == info["base_version_id"] == observation["version"]
    assert len(env.registry) == 1
    assert not terminated and not truncated


def test_invalid_edit_penalty_and_frozen_block() -> None:
    env = _env(invalid_edit_penalty=0.5, frozen_blocks=("general",))
    try:
        env.reset(seed=0)
        _, reward, _, _, info = env.step(AddLine(text="x", block="general"))
        assert reward == -0.5
        assert info["invalid_edit"]["reason"] == "frozen_block"
    finally:
        env.close()


def test_branching_from_a_named_base_version(env: PromptEnv) -> None:
    env.reset(seed=0)
    env.step(f"ADD: {COFFEE_RULE}")
    first = env.current_version_id
    _, _, _, _, info = env.step(EnvAction(edits=f"ADD: {ELSE_RULE}", base_version="v0000"))
    assert info["base_version_id"] == "v0000"
    assert env.registry.build(info["version_id"]).parent_id == "v0000"
    assert first != info["version_id"]
    with pytest.raises(EnvError, match=re.escape("Unknown base version 'v0999'")):
        env.step(EnvAction(edits=[NoOp()], base_version="v0999"))


def test_rejected_edit_keeps_the_current_version() -> None:
    env = _env(minibatch_size=None)
    try:
        env.reset(seed=0)
        env.step(f"ADD: {COFFEE_RULE}")
        good = env.current_version_id
        _, reward, _, _, info = env.step(f"EDIT: 2 -> {COFFEE_RULE.replace(COFFEE, 'Nope.')}")
        assert reward < 0
        assert info["accepted"] is False
        assert env.current_version_id == good
        assert info["version_id"] in env.registry
    finally:
        env.close()


def test_transition_always_moves_to_the_new_version() -> None:
    env = _env(transition="always")
    try:
        env.reset(seed=0)
        env.step(f"ADD: {COFFEE_RULE}")
        _, reward, _, _, info = env.step(f"EDIT: 2 -> {COFFEE_RULE.replace(COFFEE, 'Nope.')}")
        assert reward <= 0 and info["accepted"] is True
        assert env.current_version_id == info["version_id"]
    finally:
        env.close()


def test_terminates_on_target_and_truncates_on_max_steps() -> None:
    env = _env(target_score=0.99, max_steps=3)
    try:
        env.reset(seed=0)
        _, _, terminated, truncated, _ = env.step(
            f"ADD: {COFFEE_RULE}\nADD: if input mentions cup or beans or barista or brew or "
            f'mug or caffeine or roast or café or cafe or cappuccino: respond "{COFFEE}"\n'
            f"ADD: {ELSE_RULE}"
        )
        assert not truncated
        _, _, _, truncated_1, _ = env.step(NoOp())
        _, _, _, truncated_2, _ = env.step(NoOp())
        assert (truncated_1, truncated_2) == (False, True)
        assert terminated or env.usage["calls"] > 0
    finally:
        env.close()


def test_budget_truncates() -> None:
    env = _env(max_calls=10, max_steps=50)
    try:
        env.reset(seed=0)
        _, _, _, truncated, info = env.step(f"ADD: {COFFEE_RULE}")
        assert truncated and info["budget_exhausted"]
        _, reward, _, truncated, _ = env.step(NoOp())
        assert truncated and reward == 0.0
    finally:
        env.close()


def test_failed_samples_score_zero_and_are_listed() -> None:
    checkpoint = load_dataset("coffee_sports", model="sim-keyword", limit=40)
    faults = FaultPlan(fail_rate=0.5, kinds=("server_error",), seed=1)
    env = make_prompt_env(
        data=checkpoint,
        backend=Backend(faults=faults),
        evaluators=[ExactMatch(name="exact_match")],
        config={"minibatch_size": 10},
    )
    env.replayer.config = env.replayer.config.model_copy(update={"max_retries": 0})
    try:
        env.reset(seed=0)
        _, _, _, _, info = env.step(f"ADD: {COFFEE_RULE}")
        assert info["failures"]
        for sample_id, error in info["failures"].items():
            assert info["sample_scores"][sample_id] == 0.0
            assert error
    finally:
        env.close()


def test_lifecycle_errors() -> None:
    env = _env()
    with pytest.raises(EnvError, match=re.escape("Cannot call step() before reset()")):
        env.step(NoOp())
    with pytest.raises(EnvError, match="Expects an action"):
        env.reset(seed=0)
        env.step(42)
    env.close()
    with pytest.raises(EnvError, match="closed"):
        env.reset(seed=0)


def test_closing_the_env_closes_its_client_on_its_own_loop_unless_shared() -> None:
    env = _env()
    env.reset(seed=0)
    env.step(AddLine(text=COFFEE_RULE, block="sop"))
    client = env.replayer.client
    assert not client.is_closed()
    env.close()
    assert client.is_closed()  # not left to a garbage collector on some other loop

    checkpoint = load_dataset("coffee_sports", model="sim-keyword", limit=60)
    shared = Backend().async_client()
    for _ in range(2):  # the second env replays through the client the first one used
        keeper = PromptEnv(checkpoint, shared, [ExactMatch(name="exact_match")], close_client=False)
        keeper.reset(seed=0)
        keeper.close()
    assert not shared.is_closed()


def test_wrappers_record_statistics_and_limit_time() -> None:
    wrapped = RecordEpisodeStatistics(TimeLimit(_env(minibatch_size=None), max_episode_steps=2))
    wrapped.reset(seed=0)
    wrapped.step(f"ADD: {COFFEE_RULE}")
    _, _, terminated, truncated, info = wrapped.step(NoOp())
    assert truncated or terminated
    assert info["episode"]["l"] == 2
    assert info["episode"]["r"] > 0
    wrapped.close()


def test_same_seed_and_actions_give_same_episode() -> None:
    actions = [f"ADD: {COFFEE_RULE}", DeleteLine(line=1), f"ADD: {ELSE_RULE}"]
    runs = []
    for _ in range(2):
        env = _env()
        try:
            observation, _ = env.reset(seed=11)
            trace = [observation["prompt"]]
            for action in actions:
                observation, reward, _, _, info = env.step(action)
                trace += [observation["prompt"], reward, info["minibatch"], info["scores"]]
            runs.append(trace)
        finally:
            env.close()
    assert runs[0] == runs[1]


def test_resume_options_restore_version_and_minibatch_sequence(env: PromptEnv) -> None:
    env.reset(seed=5)
    env.step(f"ADD: {COFFEE_RULE}")
    before_second = env.current_version_id
    _, _, _, _, second = env.step(f"ADD: {ELSE_RULE}")
    version = env.current_version_id

    resumed = _env()
    try:
        resumed.registry = env.registry
        options = {"version": before_second, "step": 1}
        observation, _ = resumed.reset(seed=5, options=options)
        assert observation["version"] == before_second
        _, _, _, _, info = resumed.step(f"ADD: {ELSE_RULE}")
        assert info["minibatch"] == second["minibatch"]
        assert resumed.current_version_id == version
    finally:
        resumed.close()


def test_observation_is_fresh_each_call(env: PromptEnv) -> None:
    first, _ = env.reset(seed=0)
    second, _, _, _, _ = env.step(NoOp())
    assert first is not second and first["scores"] is not second["scores"]
    assert env.observation_space.contains(second)


def test_unicode_prompts_are_observable() -> None:
    checkpoint = load_dataset("coffee_sports", model="sim-keyword", limit=20)
    checkpoint = checkpoint.model_copy(
        update={
            "action": checkpoint.action.model_copy(
                update={"system_prompt": "Sois gentil ☕ — réponds en une phrase 😀"}
            )
        }
    )
    env = make_prompt_env(
        data=checkpoint, evaluators=[ExactMatch(name="exact_match")], config=PromptEnvConfig()
    )
    try:
        observation, _ = env.reset(seed=0)
        assert "☕" in observation["prompt"]
        assert env.observation_space.contains(observation)
    finally:
        env.close()


def test_no_change_costs_no_model_call(env: PromptEnv) -> None:
    env.reset(seed=0)
    env.step(f"ADD: {COFFEE_RULE}")
    sent = env.usage["calls"]
    _, reward, _, _, info = env.step(NoOp())
    _, _, _, _, invalid = env.step("DEL: 99")
    assert reward == 0.0 and info["invalid_edit"] is None
    assert invalid["invalid_edit"]["reason"] == "line_out_of_range"
    assert env.usage["calls"] == sent


def test_observe_on_no_op_shows_the_current_version_on_a_fresh_minibatch() -> None:
    env = _env(observe_on_no_op=True)
    try:
        env.reset(seed=0)
        _, _, _, _, first = env.step(f"ADD: {COFFEE_RULE}")
        current, sent = env.current_version_id, env.usage["calls"]
        _, reward, _, _, info = env.step(NoOp())
        assert reward == 0.0 and env.current_version_id == current
        assert info["minibatch"] != first["minibatch"]
        assert {row["sample_id"] for row in info["examples"]} == set(info["minibatch"])
        assert 0 < env.usage["calls"] - sent <= len(info["minibatch"])
        sent = env.usage["calls"]
        _, _, _, _, invalid = env.step("DEL: 99")
        assert invalid["invalid_edit"]["reason"] == "line_out_of_range"
        assert env.usage["calls"] == sent
    finally:
        env.close()


def test_a_branch_worse_than_current_is_not_accepted() -> None:
    env = _env(minibatch_size=None)
    try:
        env.reset(seed=0)
        env.step(f"ADD: {COFFEE_RULE}\nADD: {ELSE_RULE}")
        best = env.current_version_id
        # Better than its base (the placeholder), worse than the current version.
        _, reward, _, _, info = env.step(
            EnvAction(edits=f"ADD: {COFFEE_RULE}", base_version="v0000")
        )
        assert reward > 0
        assert info["accepted"] is False
        assert env.current_version_id == best
    finally:
        env.close()


def test_steps_never_send_more_than_max_calls() -> None:
    env = _env(max_calls=40, max_steps=50)
    actions = [f"ADD: {COFFEE_RULE}", f"ADD: {ELSE_RULE}", DeleteLine(line=1), NoOp()] * 3
    try:
        env.reset(seed=3)
        refused = None
        for action in actions:
            _, reward, _, truncated, info = env.step(action)
            assert env.usage["calls"] <= 40
            if info["budget_refusal"]:
                refused = info
                break
        assert refused is not None and reward == 0.0 and truncated
        assert refused["budget_refusal"].startswith("call budget: the step needs up to")
        assert env.budget_exhausted() and env.budget_refusal == refused["budget_refusal"]
    finally:
        env.close()


def test_reserved_calls_are_held_back_and_calls_to_score_is_exact() -> None:
    env = _env(max_calls=100)
    try:
        env.reset(seed=0)
        state = env.registry.build(env.current_version_id).state
        minibatch_cost = env.calls_to_score(state, env.splits.train[:8])
        assert 0 <= minibatch_cost <= 8
        test_cost = env.calls_to_score_version(env.registry.live_id, "test")
        before = env.usage["calls"]
        env.score_version(env.registry.live_id, "test")
        assert env.usage["calls"] - before == test_cost
        assert env.calls_to_score_version(env.registry.live_id, "test") == 0
        env.reserved_calls = 100 - env.usage["calls"] - 3
        _, _, _, truncated, info = env.step(f"ADD: {COFFEE_RULE}")
        assert truncated and info["budget_refusal"] and env.usage["calls"] <= 97
    finally:
        env.close()


def test_state_dict_and_spend_continue_an_episode_in_a_new_env(tmp_path) -> None:
    from selfimprove_rl.cache import ResponseCache
    from selfimprove_rl.registry import Registry

    checkpoint = load_dataset("coffee_sports", model="sim-keyword", limit=60)
    actions = [f"ADD: {COFFEE_RULE}", NoOp(), f"ADD: {ELSE_RULE}", DeleteLine(line=1)]

    def make(directory: str) -> PromptEnv:
        return make_prompt_env(
            data=checkpoint,
            evaluators=[ExactMatch(name="exact_match")],
            config={"minibatch_size": 8, "max_steps": 10},
            registry=Registry(tmp_path / directory / "versions.jsonl"),
            cache=ResponseCache(tmp_path / directory / "cache.sqlite"),
        )

    whole = make("whole")
    whole.reset(seed=4)
    reference = [whole.step(action) for action in actions]
    whole.close()

    first = make("split")
    first.reset(seed=4)
    for action in actions[:2]:
        first.step(action)
    saved, spend = first.state_dict(), first.spend.state()
    first.step(actions[2])  # paid after the save, then "killed": its work is redone below
    first.close()

    second = make("split")
    second.spend.restore(spend)
    observation, _ = second.reset(options={"restore": saved})
    assert observation["version"] == reference[1][0]["version"]
    for action, (obs, reward, *_, info) in zip(actions[2:], reference[2:], strict=True):
        got = second.step(action)
        assert got[0]["prompt"] == obs["prompt"] and got[1] == reward
        assert got[4]["minibatch"] == info["minibatch"] and got[4]["scores"] == info["scores"]
    assert second.usage["calls"] == whole.usage["calls"]
    assert second.usage["tokens"] == whole.usage["tokens"]
    second.close()
