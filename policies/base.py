"""What is a policy? One small protocol every policy implements, and a base class.

A policy sees only the Gymnasium API plus our public types: ``act(observation, info)``
returns an action the env accepts (an edit, a list of edits, directive text, or an
:class:`~envs.spaces.EnvAction` naming a base version); ``update(transition)`` receives what
the step returned. ``state_dict`` / ``load_state_dict`` let a killed run resume with the
policy's memory intact (JSON-serialisable values only).

Useful ``info`` keys (see :meth:`envs.prompt_env.PromptEnv.step`): ``examples`` (per-sample
rows of the current version on the latest minibatch, worst first: input, output, reference,
score, per-eval scores and explanations), ``scores``, ``base_scores``, ``sample_scores``,
``version_id``, ``current_version_id``, ``invalid_edit``, ``directive``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

Observation = dict[str, Any]


class Transition(NamedTuple):
    """What one env step did: the action taken and everything ``step`` returned."""

    observation: Observation
    action: Any
    reward: float
    next_observation: Observation
    terminated: bool
    truncated: bool
    info: dict[str, Any]


@runtime_checkable
class Policy(Protocol):
    """Chooses prompt edits. Must set ``name``."""

    name: str

    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Start an episode at ``observation``."""
        ...

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return the next action."""
        ...

    def update(self, transition: Transition) -> None:
        """Learn from one step."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Return the policy's memory as JSON-serialisable data."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore memory saved by :meth:`state_dict`."""
        ...


class BasePolicy:
    """Defaults for the optional parts of :class:`Policy`: no learning, no memory.

    Subclasses must set ``name`` and implement :meth:`act`; they may override the rest.

    Args:
        seed: seeds ``self.rng`` (a NumPy generator), the policy's only randomness source.
    """

    name = "base"

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Start an episode; the default does nothing."""

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return the next action; subclasses must implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement act()")

    def update(self, transition: Transition) -> None:
        """Learn from one step; the default does nothing."""

    def state_dict(self) -> dict[str, Any]:
        """Return the RNG state; subclasses extend it with their memory."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the RNG state; subclasses extend it with their memory."""
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
