"""Gymnasium environments over prompt versions.

Importing this package registers:

* ``selfimprove_rl/PromptEnv-v0`` — deterministic (the simulated model, the default);
* ``selfimprove_rl/PromptEnvLLM-v0`` — the same env on a real LLM backend, registered as
  nondeterministic so Gymnasium's determinism checks are skipped;
* ``selfimprove_rl/ProgramEnv-v0`` — a multi-call program (default: the shipped router ->
  responder ``support_pipeline`` on the simulated model); ``envs.multi_agent.parallel_env()``
  is its PettingZoo form, one agent per node;
* ``selfimprove_rl/ProgramAgents-v0`` — that multi-agent env driven as one Gymnasium env (an
  action per agent, the team reward; what the runner uses for a team of agents).

Each spec's ``max_episode_steps`` is the env's default ``max_steps`` (20), where it truncates;
``gymnasium.make(id, config={"max_steps": 40}, max_episode_steps=40)`` keeps the two equal for
another length.

Example:
    >>> import gymnasium, envs
    >>> sorted(k for k in gymnasium.registry if k.startswith("selfimprove_rl/"))
    ['selfimprove_rl/ProgramAgents-v0',
     'selfimprove_rl/ProgramEnv-v0',
     'selfimprove_rl/PromptEnv-v0',
     'selfimprove_rl/PromptEnvLLM-v0']
"""

import gymnasium

from envs.program_env import ProgramEnvConfig
from envs.program_spaces import ProgramAction, ProgramActionSpace
from envs.prompt_env import PromptEnvConfig
from envs.sb3 import CandidateActions, FeatureObservation, Featurizer, make_sb3_env
from envs.spaces import PROMPT_CHARSET, Charset, CharsetText, EnvAction, PromptActionSpace

ENV_ID = "selfimprove_rl/PromptEnv-v0"
LLM_ENV_ID = "selfimprove_rl/PromptEnvLLM-v0"
PROGRAM_ENV_ID = "selfimprove_rl/ProgramEnv-v0"
AGENTS_ENV_ID = "selfimprove_rl/ProgramAgents-v0"

# The spec's step limit is where the env truncates by default (``max_steps``); with another
# ``max_steps`` pass the same ``max_episode_steps`` to ``gymnasium.make`` (the runner does).
_PROMPT_STEPS = int(PromptEnvConfig.model_fields["max_steps"].default)
_PROGRAM_STEPS = int(ProgramEnvConfig.model_fields["max_steps"].default)

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="envs.factory:make_prompt_env",
        nondeterministic=False,
        max_episode_steps=_PROMPT_STEPS,
    )
if LLM_ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=LLM_ENV_ID,
        entry_point="envs.factory:make_prompt_env",
        nondeterministic=True,
        kwargs={"backend": {"kind": "openai"}},
        max_episode_steps=_PROMPT_STEPS,
    )
if PROGRAM_ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=PROGRAM_ENV_ID,
        entry_point="envs.program_factory:make_program_env",
        nondeterministic=False,
        max_episode_steps=_PROGRAM_STEPS,
    )
if AGENTS_ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=AGENTS_ENV_ID,
        entry_point="envs.multi_agent:make_team_env",
        nondeterministic=False,
        disable_env_checker=True,
        max_episode_steps=_PROGRAM_STEPS,
    )

__all__ = [
    "AGENTS_ENV_ID",
    "ENV_ID",
    "LLM_ENV_ID",
    "PROGRAM_ENV_ID",
    "PROMPT_CHARSET",
    "CandidateActions",
    "Charset",
    "CharsetText",
    "EnvAction",
    "FeatureObservation",
    "Featurizer",
    "ProgramAction",
    "ProgramActionSpace",
    "ProgramEnvConfig",
    "PromptActionSpace",
    "PromptEnvConfig",
    "make_sb3_env",
]
