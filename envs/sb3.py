"""How does stable-baselines3 see a PromptEnv? A numeric observation and ``Discrete(K)`` actions.

SB3 takes Box/Discrete spaces, not text, so two wrappers adapt the text-native env (the
pattern that passes both Gymnasium's and SB3's checkers):

* :class:`CandidateActions` (an ``ActionWrapper``): action ``i`` of ``Discrete(k)`` applies
  the ``i``-th of ``k`` candidate edits a proposer made for the current version; the
  candidates are refreshed after every reset and step. ``action_masks()`` marks the slots
  that hold a candidate, which sb3-contrib's ``MaskablePPO`` reads. An empty slot (or a slot
  chosen by an unmasked algorithm) means "no change"; with no candidate at all slot 0 is
  the no-change action, so a mask is never all false.
* :class:`FeatureObservation` (an ``ObservationWrapper``): the observation becomes a
  ``Box(0, 1)`` vector from :class:`Featurizer` — a hashed bag of words of the rendered
  prompt, each block's line count, the scores, and a one-hot of the model.

:func:`make_sb3_env` stacks both. The proposer is any object with
``propose(observation, info, k)`` (see :mod:`policies.proposers`); envs never import
policies, so the caller passes one in.

Example:
    >>> featurizer = Featurizer(["general", "sop"], n_scores=2, models=["sim-large"], hash_dim=8)
    >>> featurizer.size
    14
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.spaces import EnvAction
from selfimprove_rl.errors import EnvError
from selfimprove_rl.prompt import NoOp

_WORD = re.compile(r"\w+")


class Featurizer:
    r"""Turns a PromptEnv observation into a fixed-length vector in [0, 1].

    Layout: ``hash_dim`` hashed word features (``log1p(count) / log1p(count_scale)``,
    capped at 1; words are lowercase ``\w+`` tokens hashed by CRC-32, which is stable across
    processes, unlike ``hash``), one line-count feature per block (``lines / max_lines``,
    capped at 1), the scores as observed (aggregate, then each eval), and a one-hot of the
    model over ``models`` plus one slot for any other model.

    Args:
        block_names: the env's blocks, in order.
        n_scores: length of ``observation["scores"]``.
        models: models to one-hot (others share the last slot).
        hash_dim: buckets of the bag of words.
        max_lines: line count that maps to 1.
        count_scale: word count that maps to 1.
    """

    def __init__(
        self,
        block_names: Sequence[str],
        n_scores: int,
        models: Sequence[str],
        *,
        hash_dim: int = 64,
        max_lines: int = 32,
        count_scale: int = 16,
    ) -> None:
        if hash_dim < 1 or max_lines < 1 or count_scale < 1 or n_scores < 0:
            raise EnvError(
                "Expects hash_dim, max_lines and count_scale >= 1 and n_scores >= 0, got "
                f"{hash_dim}, {max_lines}, {count_scale}, {n_scores}."
            )
        self.block_names = tuple(block_names)
        self.n_scores = n_scores
        self.models = tuple(dict.fromkeys(models))
        self.hash_dim = hash_dim
        self.max_lines = max_lines
        self.count_scale = count_scale

    @classmethod
    def for_observation(
        cls, observation: dict[str, Any], models: Sequence[str] = (), **options: Any
    ) -> Featurizer:
        """Return a featurizer sized for an observation (its blocks, scores and model)."""
        return cls(
            list(dict(observation.get("blocks") or {})),
            len(np.asarray(observation.get("scores", ()))),
            list(models) or [str(observation.get("model") or "")],
            **options,
        )

    @property
    def size(self) -> int:
        """Length of the feature vector."""
        return self.hash_dim + len(self.block_names) + self.n_scores + len(self.models) + 1

    @property
    def space(self) -> spaces.Box:
        """The ``Box(0, 1, (size,), float32)`` the vectors live in."""
        return spaces.Box(0.0, 1.0, shape=(self.size,), dtype=np.float32)

    def __call__(self, observation: dict[str, Any]) -> np.ndarray:
        """Return the feature vector of one observation."""
        counts = np.zeros(self.hash_dim, dtype=np.float64)
        for word in _WORD.findall(str(observation.get("prompt") or "").lower()):
            counts[zlib.crc32(word.encode("utf-8")) % self.hash_dim] += 1
        words = np.minimum(np.log1p(counts) / np.log1p(self.count_scale), 1.0)
        blocks = dict(observation.get("blocks") or {})
        lines = [
            min(1.0, len(blocks[name].split("\n")) / self.max_lines) if blocks.get(name) else 0.0
            for name in self.block_names
        ]
        scores = np.zeros(self.n_scores, dtype=np.float64)
        observed = np.asarray(observation.get("scores", ()), dtype=np.float64).ravel()
        scores[: min(len(observed), self.n_scores)] = observed[: self.n_scores]
        model = np.zeros(len(self.models) + 1, dtype=np.float64)
        name = str(observation.get("model") or "")
        model[self.models.index(name) if name in self.models else len(self.models)] = 1.0
        vector = np.concatenate([words, lines, np.clip(scores, 0.0, 1.0), model])
        return vector.astype(np.float32)


class CandidateActions(gymnasium.ActionWrapper[Any, Any, Any]):
    """``Discrete(k)`` actions over a proposer's candidates for the current version.

    Args:
        env: a PromptEnv (possibly wrapped) with text observations.
        proposer: makes candidates: ``propose(observation, info, k) -> list[Candidate]``;
            its optional ``feedback(candidate, reward, accepted, info)`` hears each verdict.
        k: number of candidate slots.

    Attributes:
        candidates: the current slots' candidates (fewer than ``k`` when the proposer had
            fewer ideas).
    """

    def __init__(self, env: gymnasium.Env[Any, Any], proposer: Any, k: int = 4) -> None:
        super().__init__(env)
        if k < 1:
            raise EnvError(f"Expects k >= 1 candidate slots, got {k}.")
        if not callable(getattr(proposer, "propose", None)):
            raise EnvError(
                f"Expects a proposer with propose(observation, info, k), got "
                f"{type(proposer).__name__}."
            )
        self.proposer = proposer
        self.k = k
        self.action_space = spaces.Discrete(k)
        self.candidates: list[Any] = []
        self._base: str | None = None
        self._chosen: Any = None

    def _refresh(self, observation: dict[str, Any], info: dict[str, Any]) -> None:
        self._base = str(info.get("current_version_id") or observation.get("version") or "")
        proposed = self.proposer.propose(observation, info, self.k)
        self.candidates = [c for c in proposed if not c.is_no_change()][: self.k]

    def action_masks(self) -> np.ndarray:
        """Return which slots hold a candidate (slot 0 is always valid: no change if empty)."""
        mask = np.zeros(self.k, dtype=bool)
        mask[: max(1, len(self.candidates))] = True
        return mask

    def action(self, action: Any) -> EnvAction:
        """Return the env action for slot ``action`` (no change for an empty slot)."""
        index = int(np.asarray(action).reshape(-1)[0])
        if not 0 <= index < self.k:
            raise EnvError(f"Expects an action in 0..{self.k - 1}, got {index}.")
        if index < len(self.candidates):
            self._chosen = self.candidates[index]
            action_for_env: EnvAction = self._chosen.to_action(base_version=self._base or None)
            return action_for_env
        self._chosen = None
        return EnvAction(edits=[NoOp()], base_version=self._base or None, origin="sb3:empty_slot")

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env and propose the first candidates."""
        observation, info = self.env.reset(seed=seed, options=options)
        self._refresh(observation, info)
        return observation, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Apply the chosen candidate, tell the proposer, and propose the next candidates."""
        observation, reward, terminated, truncated, info = self.env.step(self.action(action))
        feedback = getattr(self.proposer, "feedback", None)
        if self._chosen is not None and callable(feedback):
            feedback(self._chosen, float(reward), bool(info.get("accepted")), info)
        self._refresh(observation, info)
        return observation, float(reward), terminated, truncated, info


class FeatureObservation(gymnasium.ObservationWrapper[np.ndarray, Any, Any]):
    """Replaces the text observation by :class:`Featurizer`'s vector.

    Args:
        env: an env with PromptEnv observations.
        featurizer: the vectorizer (default: sized from the env's spaces and models).
        hash_dim: bag-of-words buckets when building the default featurizer.
    """

    def __init__(
        self,
        env: gymnasium.Env[Any, Any],
        featurizer: Featurizer | None = None,
        *,
        hash_dim: int = 64,
    ) -> None:
        super().__init__(env)
        if featurizer is None:
            space = env.observation_space
            if not isinstance(space, spaces.Dict) or "blocks" not in space.spaces:
                raise EnvError(
                    "FeatureObservation expects a PromptEnv observation space (a Dict with "
                    f"'blocks' and 'scores'), got {space}."
                )
            blocks = space["blocks"]
            assert isinstance(blocks, spaces.Dict)
            scores = space["scores"].shape or (0,)
            try:
                models = list(env.get_wrapper_attr("models"))
            except AttributeError:
                models = []
            featurizer = Featurizer(list(blocks.spaces), int(scores[0]), models, hash_dim=hash_dim)
        self.featurizer = featurizer
        self.observation_space = featurizer.space

    def observation(self, observation: Any) -> np.ndarray:
        """Return the feature vector."""
        return self.featurizer(observation)


def make_sb3_env(
    env: gymnasium.Env[Any, Any], proposer: Any, *, k: int = 4, hash_dim: int = 64
) -> FeatureObservation:
    """Wrap a PromptEnv for stable-baselines3: candidate actions inside, features outside.

    Args:
        env: a PromptEnv (or a wrapper of one).
        proposer: the candidate source (see :class:`CandidateActions`).
        k: candidate slots (``Discrete(k)``).
        hash_dim: bag-of-words buckets.

    Returns:
        The wrapped env; ``env.get_wrapper_attr("action_masks")()`` gives the mask.
    """
    return FeatureObservation(CandidateActions(env, proposer, k), hash_dim=hash_dim)
