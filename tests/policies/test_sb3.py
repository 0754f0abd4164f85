from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from proposer_helpers import COFFEE_RULE, ELSE_RULE, NEUTRAL, ScriptedProposer, drive, small_env

from envs.prompt_env import PromptEnv
from envs.sb3 import CandidateActions, Featurizer, make_sb3_env
from policies.catalog import make_proposer
from policies.sb3_policy import SB3Policy, tensorboard_available
from selfimprove_rl.errors import EnvError, PolicyError


@pytest.fixture
def env() -> Iterator[PromptEnv]:
    environment = small_env(max_steps=4)
    yield environment
    environment.close()


def test_wrapped_env_passes_sb3_check_env_without_warnings(env: PromptEnv) -> None:
    from stable_baselines3.common.env_checker import check_env

    wrapped = make_sb3_env(env, make_proposer("operators", seed=0), k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(wrapped)
    assert wrapped.observation_space.shape == (64 + 2 + 2 + 2,)
    assert wrapped.action_space.n == 3


def test_action_masks_mark_filled_slots_and_empty_slots_change_nothing(env: PromptEnv) -> None:
    proposer = ScriptedProposer([COFFEE_RULE, ELSE_RULE])
    wrapped = make_sb3_env(env, proposer, k=4)
    wrapped.reset(seed=0)
    masks = wrapped.get_wrapper_attr("action_masks")
    assert masks().tolist() == [True, True, False, False]
    _, reward, _, _, info = wrapped.step(3)
    assert info["directive"] == "no_change" and reward == 0.0
    _, reward, _, _, info = wrapped.step(0)
    assert info["directive"] == COFFEE_RULE
    assert proposer.feedback_log[-1][0] == COFFEE_RULE and proposer.feedback_log[-1][1] == reward
    proposer.candidates = []
    wrapped.reset(seed=1)
    assert masks().tolist() == [True, False, False, False]
    with pytest.raises(EnvError, match=re.escape("Expects an action in 0..3, got 7.")):
        wrapped.step(7)


def test_candidate_actions_need_a_proposer(env: PromptEnv) -> None:
    with pytest.raises(EnvError, match="Expects a proposer with propose"):
        CandidateActions(env, object())


def test_featurizer_is_bounded_stable_and_one_hot() -> None:
    observation = {
        "prompt": 'Be kind.\n\n## SOP\nif input mentions coffee: respond "Yes."',
        "blocks": {"general": "Be kind.", "sop": 'if input mentions coffee: respond "Yes."'},
        "model": "sim-large",
        "scores": np.array([0.25, 0.5], dtype=np.float32),
    }
    first = Featurizer(["general", "sop"], 2, ["sim-large", "sim-small"], hash_dim=16)
    second = Featurizer(["general", "sop"], 2, ["sim-large", "sim-small"], hash_dim=16)
    vector = first(observation)
    assert vector.dtype == np.float32 and vector.shape == (first.size,) == (16 + 2 + 2 + 3,)
    assert first.space.contains(vector)
    assert np.array_equal(vector, second(observation))
    assert vector[16:18].tolist() == pytest.approx([1 / 32, 1 / 32])
    assert vector[18:20].tolist() == [0.25, 0.5]
    assert vector[20:].tolist() == [1.0, 0.0, 0.0]
    assert first({**observation, "model": "gpt-x"})[20:].tolist() == [0.0, 0.0, 1.0]
    assert vector[:16].sum() > 0


def test_learn_with_sb3_loop_writes_monitor_and_progress(env: PromptEnv, tmp_path: Path) -> None:
    from stable_baselines3.common.monitor import load_results

    proposer = ScriptedProposer([COFFEE_RULE, ELSE_RULE, NEUTRAL])
    policy = SB3Policy(
        seed=0, proposer=proposer, k=3, n_steps=8, batch_size=4, n_epochs=2, log_dir=str(tmp_path)
    )
    model = policy.learn(env, total_timesteps=16)
    assert model.num_timesteps == 16
    episodes = load_results(str(tmp_path))
    assert len(episodes) == 4 and set(episodes["l"]) == {4}
    progress = (tmp_path / "progress.csv").read_text().splitlines()
    assert "train/value_loss" in progress[0] and len(progress) == 3


@pytest.mark.skipif(tensorboard_available(), reason="tensorboard is installed")
def test_tensorboard_without_the_package_warns_and_keeps_csv(tmp_path: Path) -> None:
    policy = SB3Policy(seed=0, proposer="operators", log_dir=str(tmp_path), tensorboard=True)
    observation = {"prompt": "x", "blocks": {"sop": "x"}, "model": "m", "scores": [0.0, 0.0]}
    with pytest.warns(UserWarning, match="pip install tensorboard"):
        policy.reset(observation, {})


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo"])
def test_protocol_runs_ppo_updates_and_state_round_trips(
    env: PromptEnv, tmp_path: Path, algo: str
) -> None:
    proposer = ScriptedProposer([COFFEE_RULE, ELSE_RULE, NEUTRAL])
    options = {"k": 4, "n_steps": 4, "batch_size": 4, "n_epochs": 2, "algo": algo}
    policy = SB3Policy(seed=0, proposer=proposer, log_dir=str(tmp_path), **options)
    before = {k: v.clone() for k, v in _weights(policy, env).items()}
    infos = drive(env, policy, steps=9)
    assert policy.updates == 2 and policy.model.num_timesteps == 9
    assert any(not np.allclose(before[k], v) for k, v in policy.model.policy.state_dict().items())
    chosen = {i["directive"] for i in infos}
    assert chosen <= {c.directive_text() for c in proposer.candidates} | {"no_change"}
    assert len(proposer.feedback_log) == sum(1 for i in infos if i["directive"] != "no_change")
    assert (tmp_path / "monitor.csv").exists() and (tmp_path / "progress.csv").exists()
    state = json.loads(json.dumps(policy.state_dict()))
    restored = SB3Policy(seed=0, proposer=proposer, **options)
    restored.load_state_dict(state)
    for key, value in policy.model.policy.state_dict().items():
        assert np.array_equal(value.numpy(), restored.model.policy.state_dict()[key].numpy())
    assert restored.model.num_timesteps == 9


def _weights(policy: SB3Policy, env: PromptEnv) -> dict[str, object]:
    observation, info = env.reset(seed=0)
    policy.reset(observation, info)
    return dict(policy.model.policy.state_dict())


def test_bad_options_are_named() -> None:
    with pytest.raises(PolicyError, match="algo 'auto', 'ppo' or 'maskable_ppo'"):
        SB3Policy(seed=0, proposer="operators", algo="a2c")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="n_steps >= 2"):
        SB3Policy(seed=0, proposer="operators", n_steps=1)
