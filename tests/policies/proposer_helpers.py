"""A scripted proposer and a small real env for bandit, population and SB3 policy tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envs.factory import make_prompt_env
from envs.prompt_env import PromptEnv
from policies.base import Transition
from policies.proposers import Candidate
from selfimprove_rl.evals.code import ExactMatch
from selfimprove_rl.mimic import load_dataset

COFFEE = "I see you are a person of taste! I like coffee, too."
SPORTS = "Well, I don't like sports."
COFFEE_RULE = f'ADD: if input mentions coffee or espresso or latte: respond "{COFFEE}"'
ELSE_RULE = f'ADD: else: respond "{SPORTS}"'
NEUTRAL = "ADD: Keep replies to one short sentence."
HARMFUL = 'ADD: if input mentions I or my: respond "Hello."'


class ScriptedProposer:
    """Proposes the same directives every time (at most k) and records every verdict."""

    name = "scripted"

    def __init__(self, directives: list[str], *, block: str | None = None) -> None:
        prefix = f"BLOCK: {block}\n" if block else ""
        self.candidates = [
            Candidate(edits=prefix + d, proposer=self.name, kind=f"k{i}")
            for i, d in enumerate(directives)
        ]
        self.calls: list[dict[str, Any]] = []
        self.feedback_log: list[tuple[str, float, bool]] = []

    def propose(
        self, observation: Mapping[str, Any], info: Mapping[str, Any], k: int
    ) -> list[Candidate]:
        self.calls.append({"version": observation.get("version"), "k": k})
        return self.candidates[:k]

    def feedback(
        self, candidate: Candidate, reward: float, accepted: bool, info: Mapping[str, Any]
    ) -> None:
        self.feedback_log.append((candidate.directive_text(), reward, accepted))


def small_env(**config: Any) -> PromptEnv:
    """60 coffee/sports samples, keyword model, exact-match eval (no embeddings)."""
    checkpoint = load_dataset("coffee_sports", model="sim-keyword", limit=60)
    options = {"minibatch_size": 8, "max_steps": 50, "target_score": None, **config}
    return make_prompt_env(
        data=checkpoint, evaluators=[ExactMatch(name="exact_match")], config=options
    )


def drive(env: Any, policy: Any, steps: int, seed: int = 0) -> list[dict[str, Any]]:
    """Run the policy protocol for ``steps`` steps (resetting on episode ends)."""
    observation, info = env.reset(seed=seed)
    policy.reset(observation, info)
    infos: list[dict[str, Any]] = []
    for _ in range(steps):
        action = policy.act(observation, info)
        following, reward, terminated, truncated, info = env.step(action)
        policy.update(
            Transition(observation, action, reward, following, terminated, truncated, info)
        )
        infos.append({**info, "reward": reward, "action": action})
        observation = following
        if terminated or truncated:
            observation, info = env.reset(seed=seed + len(infos))
            policy.reset(observation, info)
    return infos
