"""Gymnasium environments over prompt versions.

Importing this package registers:

* ``selfimprove_rl/PromptEnv-v0`` — deterministic (the simulated model, the default);
* ``selfimprove_rl/PromptEnvLLM-v0`` — the same env on a real LLM backend, registered as
  nondeterministic so Gymnasium's determinism checks are skipped.

Example:
    >>> import gymnasium, envs
    >>> sorted(k for k in gymnasium.registry if k.startswith("selfimprove_rl/"))
    ['selfimprove_rl/PromptEnv-v0', 'selfimprove_rl/PromptEnvLLM-v0']
"""

import gymnasium

from envs.sb3 import CandidateActions, FeatureObservation, Featurizer, make_sb3_env
from envs.spaces import EnvAction, PromptActionSpace

ENV_ID = "selfimprove_rl/PromptEnv-v0"
LLM_ENV_ID = "selfimprove_rl/PromptEnvLLM-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID, entry_point="envs.factory:make_prompt_env", nondeterministic=False
    )
if LLM_ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=LLM_ENV_ID,
        entry_point="envs.factory:make_prompt_env",
        nondeterministic=True,
        kwargs={"backend": {"kind": "openai"}},
    )

__all__ = [
    "ENV_ID",
    "LLM_ENV_ID",
    "CandidateActions",
    "EnvAction",
    "FeatureObservation",
    "Featurizer",
    "PromptActionSpace",
    "make_sb3_env",
]
