"""One agent per node: a program as a PettingZoo ``ParallelEnv`` with team and difference rewards.

:class:`ProgramParallelEnv` wraps a :class:`~envs.program_env.ProgramEnv`. Each agent owns one
node; every cycle every live agent acts on its own node (a single-call action: an edit, a list
of edits, directive text, an :class:`~envs.spaces.EnvAction`, or node edits addressed to its
own node). The valid edits of all agents are applied together as one joint program edit and
replayed on one minibatch (paired, as in the single-agent env).

Rewards, per agent:

* the **team reward** is the joint edit's end-to-end reward (what ``ProgramEnv`` returns);
* the **difference reward** of agent *i* is the end-to-end score with every agent's edit
  minus the score with every edit but *i*'s, both on the step's minibatch (Wolpert & Tumer's
  difference rewards: an agent is credited for what its own edit changed, so a router edit
  that only pays off together with the responder's edit is credited when both are made).
  The counterfactual replays cost little: nodes upstream of the agent's node, and every node
  whose inputs did not change, come from the response cache.

``rewards[agent]`` is the difference reward by default (``agent_reward="difference"``) or the
team reward (``"team"``); ``infos[agent]`` always holds both (``team_reward``,
``difference_reward``), the node's own eval delta when the node is judged (``node_reward``),
and the node's view of the traces (``examples``). An edit addressed to another agent's node
is invalid: it is dropped, the agent gets ``-invalid_edit_penalty`` and the reason in
``infos[agent]["invalid_edit"]``; the other agents' edits still apply.

Observations are single-call observations of the agent's node (the keys and spaces of
:class:`~envs.prompt_env.PromptEnv`, with the end-to-end scores), so single-call policies act
as agents unchanged (see :mod:`policies.program_adapter`). ``env()`` gives the AEC form
through PettingZoo's own conversion.

Example:
    >>> from pettingzoo.test import parallel_api_test
    >>> from selfimprove_rl.program_data import load_pipeline
    >>> parallel = parallel_env(data=load_pipeline(model="sim-keyword", limit=24),
    ...                         minibatch_size=4, max_steps=2)
    >>> parallel.possible_agents
    ['router', 'responder']
    >>> parallel_api_test(parallel, num_cycles=2)
    Passed Parallel API test
    >>> parallel.close()
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

import gymnasium
import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec
from pydantic import BaseModel, ConfigDict, Field

from envs.observation import build_observation
from envs.program_env import ProgramEnv
from envs.program_factory import make_program_env
from envs.program_spaces import ProgramAction
from envs.spaces import EnvAction, PromptActionSpace, observation_space
from selfimprove_rl.errors import EnvError, InvalidEdit
from selfimprove_rl.program_state import NodeEdit, ProgramState, apply_program
from selfimprove_rl.prompt import EDIT_TYPES, Edit, parse_directives

AgentID = str


class MultiAgentConfig(BaseModel):
    """Options of the multi-agent wrapper (the program env takes its own)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent_reward: Literal["difference", "team"] = Field(
        default="difference", description="What rewards[agent] holds; info holds both."
    )
    invalid_edit_penalty: float = Field(
        default=0.0, ge=0.0, description="Reward of an agent whose edit was invalid."
    )


class AgentActionSpace(PromptActionSpace):
    """A single-call action space that also accepts node edits (checked against the owner)."""

    def contains(self, x: Any) -> bool:
        """Whether ``x`` is a single-call action or node edits."""
        if isinstance(x, NodeEdit):
            return True
        if isinstance(x, list | tuple) and x and all(isinstance(i, NodeEdit) for i in x):
            return True
        return super().contains(x)


class ProgramParallelEnv(ParallelEnv[AgentID, dict[str, Any], Any]):
    """A program's nodes as agents acting in parallel (see the module docstring).

    Args:
        env: the program env to wrap (it is closed with this env).
        config: reward options.
        agents: the nodes that are agents (default: every node not frozen).
    """

    metadata = {"name": "selfimprove_rl_program_v0", "render_modes": ["ansi"]}  # noqa: RUF012

    def __init__(
        self,
        env: ProgramEnv,
        config: MultiAgentConfig | None = None,
        *,
        agents: list[str] | None = None,
    ) -> None:
        self.env = env
        self.config = config or MultiAgentConfig()
        editable = [n for n in env.program.order if n not in env.config.frozen_nodes]
        chosen = list(agents) if agents is not None else editable
        unknown = [a for a in chosen if a not in editable]
        if unknown:
            raise EnvError(f"Agents must be editable nodes {editable}; got {unknown}.")
        self.possible_agents: list[AgentID] = chosen
        self.agents: list[AgentID] = []
        self.render_mode = env.render_mode
        self._observation: dict[str, Any] | None = None
        self._info: dict[str, Any] = {}

    # ----------------------------------------------------------------- spaces
    @functools.cache  # noqa: B019 - one space object per agent, as PettingZoo asks
    def observation_space(self, agent: AgentID) -> spaces.Space[Any]:
        """The single-call observation space of the agent's node."""
        state = self.env.registry.build(self.env.registry.baseline_id).state
        assert isinstance(state, ProgramState)
        return observation_space(
            state.node(agent).block_names, [e.name for e in self.env.evaluators]
        )

    @functools.cache  # noqa: B019 - one space object per agent, as PettingZoo asks
    def action_space(self, agent: AgentID) -> spaces.Space[Any]:
        """Single-call edits of the agent's node."""
        blocks = self.env.editable_blocks.get(agent, ())
        return AgentActionSpace(blocks, self.env.models)

    # ----------------------------------------------------------------- API
    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[AgentID, Any], dict[AgentID, dict[str, Any]]]:
        """Reset the program env; every agent observes its node."""
        observation, info = self.env.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        self._observation, self._info = observation, info
        if seed is not None:
            for agent in self.possible_agents:
                self.action_space(agent).seed(seed + self.possible_agents.index(agent))
        return (
            {agent: self._agent_observation(agent) for agent in self.agents},
            {agent: self._agent_info(agent, info) for agent in self.agents},
        )

    def step(
        self, actions: Mapping[AgentID, Any]
    ) -> tuple[
        dict[AgentID, Any],
        dict[AgentID, float],
        dict[AgentID, bool],
        dict[AgentID, bool],
        dict[AgentID, dict[str, Any]],
    ]:
        """Apply every agent's edits as one joint edit; reward the team and each agent.

        Raises:
            EnvError: ``step`` before ``reset``, or an action for an agent that is not live.
        """
        if self._observation is None or not self.agents:
            raise EnvError("Cannot call step() before reset() (or after every agent is done).")
        strangers = [agent for agent in actions if agent not in self.agents]
        if strangers:
            raise EnvError(
                f"Actions for agents that are not live: {strangers}; live: {self.agents}."
            )
        base_id = self.env.current_version_id
        base_state = self.env.registry.build(base_id).state
        assert isinstance(base_state, ProgramState)
        own: dict[AgentID, list[NodeEdit]] = {}
        invalid: dict[AgentID, InvalidEdit] = {}
        for agent in self.agents:
            try:
                edits = self._edits_of(agent, actions.get(agent))
                apply_program(base_state, edits, allowed_models=self.env.models)
            except InvalidEdit as exc:
                invalid[agent] = exc
                edits = []
            own[agent] = edits
        joint = [edit for agent in self.agents for edit in own[agent]]
        origin = "agents[" + ", ".join(a for a in self.agents if own[a]) + "]"
        observation, team, terminated, truncated, info = self.env.step(
            ProgramAction(edits=joint, base_version=base_id, origin=origin)
        )
        differences = self._difference_rewards(base_state, own, info)
        self._observation, self._info = observation, info
        rewards: dict[AgentID, float] = {}
        infos: dict[AgentID, dict[str, Any]] = {}
        for agent in self.agents:
            difference = differences.get(agent, 0.0)
            reward = difference if self.config.agent_reward == "difference" else float(team)
            if agent in invalid:
                reward = -self.config.invalid_edit_penalty
            rewards[agent] = float(reward)
            agent_info = self._agent_info(agent, info)
            agent_info.update(
                team_reward=float(team),
                difference_reward=float(difference),
                invalid_edit=None
                if agent not in invalid
                else {
                    "reason": invalid[agent].reason,
                    "block": invalid[agent].block,
                    "line": invalid[agent].line,
                    "message": str(invalid[agent]),
                },
                node_reward=info["node_rewards"].get(agent),
                edits=len(own[agent]),
            )
            infos[agent] = agent_info
        done = terminated or truncated
        observations = {agent: self._agent_observation(agent) for agent in self.agents}
        terminations = dict.fromkeys(self.agents, bool(terminated))
        truncations = dict.fromkeys(self.agents, bool(truncated))
        if done:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def _edits_of(self, agent: AgentID, action: Any) -> list[NodeEdit]:
        """The node edits of one agent's action (raises ``InvalidEdit``)."""
        if action is None:
            return []
        if isinstance(action, EnvAction | ProgramAction):
            action = action.edits
        edits: list[NodeEdit]
        if isinstance(action, str):
            edits = [NodeEdit(node=agent, edit=e) for e in parse_directives(action)]
        elif isinstance(action, NodeEdit):
            edits = [action]
        elif isinstance(action, EDIT_TYPES):
            edits = [NodeEdit(node=agent, edit=action)]
        elif isinstance(action, list | tuple) and all(isinstance(a, NodeEdit) for a in action):
            edits = list(action)
        elif isinstance(action, list | tuple) and all(isinstance(a, EDIT_TYPES) for a in action):
            plain: list[Edit] = list(action)
            edits = [NodeEdit(node=agent, edit=e) for e in plain]
        else:
            raise EnvError(
                f"Agent {agent!r}: expects an edit, a list of edits, directive text or an "
                f"EnvAction, got {type(action).__name__}."
            )
        others = sorted({e.node for e in edits if e.node != agent})
        if others:
            raise InvalidEdit(
                f"Agent {agent!r} owns node {agent!r} only; it may not edit {others}.",
                reason="frozen_node",
            )
        return edits

    def _difference_rewards(
        self,
        base_state: ProgramState,
        own: Mapping[AgentID, list[NodeEdit]],
        info: Mapping[str, Any],
    ) -> dict[AgentID, float]:
        """Score(joint) - score(joint without i's edits) on the step's minibatch, per agent."""
        acting = [agent for agent in self.agents if own[agent]]
        if not acting or info.get("invalid_edit") is not None:
            return {}
        if len(acting) == 1:
            return {acting[0]: float(info["end_to_end_reward"])}
        samples = self.env.last_minibatch
        joint_score = float(info["scores"]["aggregate"])
        without = [
            apply_program(base_state, [e for a in acting if a != agent for e in own[a]])
            for agent in acting
        ]
        scored = self.env.evaluate_states(without, samples)
        return {
            agent: joint_score - score for agent, (score, _) in zip(acting, scored, strict=True)
        }

    # ----------------------------------------------------------------- views
    def _agent_observation(self, agent: AgentID) -> dict[str, Any]:
        assert self._observation is not None
        state = self.env.registry.build(self._observation["version"]).state
        assert isinstance(state, ProgramState)
        return build_observation(
            state.node(agent), self._observation["version"], list(self._observation["scores"])
        )

    def _agent_info(self, agent: AgentID, info: Mapping[str, Any]) -> dict[str, Any]:
        view = dict(info)
        view["examples"] = list((info.get("node_examples") or {}).get(agent, []))
        view["node"] = agent
        return view

    @property
    def last_observation(self) -> dict[str, Any]:
        """The program env's latest observation (raises before reset)."""
        if self._observation is None:
            raise EnvError("No observation before reset().")
        return self._observation

    @property
    def last_info(self) -> dict[str, Any]:
        """The program env's latest info."""
        return self._info

    def render(self) -> str | None:
        """The program env's rendering (``render_mode="ansi"``)."""
        return self.env.render()

    def state(self) -> np.ndarray:
        """The end-to-end scores of the current version (the global state PettingZoo asks for)."""
        if self._observation is None:
            raise EnvError("No state before reset().")
        return np.asarray(self._observation["scores"], dtype=np.float32)

    def close(self) -> None:
        """Close the program env."""
        self.env.close()


def parallel_env(
    *,
    data: Any = None,
    agent_reward: Literal["difference", "team"] = "difference",
    invalid_edit_penalty: float = 0.0,
    agents: list[str] | None = None,
    **program_env_kwargs: Any,
) -> ProgramParallelEnv:
    """Build the multi-agent env; with no arguments, the shipped ``support_pipeline``.

    Args:
        data: the program data (see :func:`envs.program_factory.load_program_source`).
        agent_reward: what ``rewards[agent]`` holds.
        invalid_edit_penalty: the reward of an agent whose edit was invalid.
        agents: the nodes that are agents (default: every editable node).
        **program_env_kwargs: passed to :func:`envs.program_factory.make_program_env`.
    """
    source = data if data is not None else "support_pipeline"
    env = make_program_env(data=source, **program_env_kwargs)
    config = MultiAgentConfig(agent_reward=agent_reward, invalid_edit_penalty=invalid_edit_penalty)
    return ProgramParallelEnv(env, config, agents=agents)


def env(**kwargs: Any) -> AECEnv[AgentID, dict[str, Any], Any]:
    """The AEC form of :func:`parallel_env`, through PettingZoo's own conversion."""
    return parallel_to_aec(parallel_env(**kwargs))


class TeamEnv(gymnasium.Env[dict[str, Any], Any]):
    """The multi-agent env as one Gymnasium env, so the runner can drive a team of agents.

    An action is ``{agent: single-call action}``; the reward is the team reward; ``info``
    holds the program env's keys (``version_id``, ``scores``...) plus ``agents``: per agent
    its reward (``rewards[agent]`` of the parallel env), team and difference rewards and its
    view of the traces. Registry, scoring and accounting are the program env's, so the gate,
    the run directory and Phoenix publishing work as for one coach.

    Args:
        parallel: the parallel env to drive.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012 - Gymnasium's attribute

    def __init__(self, parallel: ProgramParallelEnv) -> None:
        self.parallel = parallel
        self.program_env = parallel.env
        self.observation_space = self.program_env.observation_space
        self.action_space = spaces.Dict(
            {agent: parallel.action_space(agent) for agent in parallel.possible_agents}
        )
        self.render_mode = self.program_env.render_mode

    def __getattr__(self, name: str) -> Any:
        # registry, usage, budget_exhausted, score_version, evaluators, splits... of the program
        if name in ("parallel", "program_env"):
            raise AttributeError(name)
        return getattr(self.program_env, name)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset every agent; returns the program observation and info."""
        super().reset(seed=seed)
        _, infos = self.parallel.reset(seed=seed, options=options)
        info = dict(self.parallel.last_info)
        info["agents"] = {agent: _agent_summary(i) for agent, i in infos.items()}
        return self.parallel.last_observation, info

    def step(
        self, action: Mapping[str, Any]
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Every agent's action at once; the team reward, each agent's in ``info["agents"]``."""
        _, rewards, terminations, truncations, infos = self.parallel.step(dict(action))
        info = dict(self.parallel.last_info)
        info["agents"] = {
            agent: {**_agent_summary(infos[agent]), "reward": rewards[agent]} for agent in infos
        }
        team = next(iter(infos.values()))["team_reward"] if infos else 0.0
        terminated = any(terminations.values())
        truncated = any(truncations.values())
        return self.parallel.last_observation, float(team), terminated, truncated, info

    def render(self) -> str | None:
        """The program env's rendering."""
        return self.program_env.render()

    def close(self) -> None:
        """Close the program env."""
        self.parallel.close()


def _agent_summary(info: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("team_reward", "difference_reward", "node_reward", "invalid_edit", "edits")
    return {key: info[key] for key in keys if key in info}


def make_team_env(**kwargs: Any) -> TeamEnv:
    """The entry point of ``selfimprove_rl/ProgramAgents-v0`` (arguments of :func:`parallel_env`).

    A ``config`` mapping (the runner's ``[env]`` table) holds program env options and may
    name ``agent_reward`` and ``invalid_edit_penalty``.
    """
    config = dict(kwargs.pop("config", None) or {})
    for key in ("agent_reward", "invalid_edit_penalty"):
        if key in config:
            kwargs[key] = config.pop(key)
    return TeamEnv(parallel_env(config=config, **kwargs))
