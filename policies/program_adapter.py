"""Single-call policies on programs: a node's view, node agents, and the one-coach policy.

Every single-call policy acts on a :class:`~envs.prompt_env.PromptEnv`-shaped observation
(``blocks``, ``demos``, ``model``, ``version``, ``scores``) and reads ``info["examples"]``.
:func:`node_view` cuts that view out of a :class:`~envs.program_env.ProgramEnv` step for one
node: the node's prompt state, and the traces as *that node* saw them (its rendered input,
its output, and what it should have said: the node's expected output where the data has one,
the program's expected output for the output node). :class:`NodeAgent` wraps any
single-call policy, unchanged, so that it edits one node: its actions are addressed to the
node and its transitions are seen through the node's view. Agents of the multi-agent env
(:mod:`envs.multi_agent`) take the same views.

:class:`ProgramCoach` is *one* coach editing every node of a program, built from one
single-call policy per node: each step either one node acts (``mode="alternate"``, cycling,
skipping nodes out of ideas) or every node acts at once and the edits go out as one joint
action (``mode="joint"``), which is how one coach breaks the bootstrap of a pipeline.

Example:
    >>> coach = ProgramCoach(seed=0, mode="joint")
    >>> coach.name
    'program_coach'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from envs.program_spaces import ProgramAction
from envs.spaces import EnvAction
from policies.base import BasePolicy, Observation, Transition
from policies.catalog import make_policy
from selfimprove_rl.errors import PolicyError
from selfimprove_rl.program_state import NodeEdit
from selfimprove_rl.prompt import EDIT_TYPES, Edit, NoOp, parse_directives

_NODE_KEYS = ("prompt", "blocks", "demos", "model")


def node_view(
    observation: Observation, info: Mapping[str, Any], node: str
) -> tuple[Observation, dict[str, Any]]:
    """Return one node's single-call view of a program observation and step info.

    Args:
        observation: a ProgramEnv observation.
        info: the matching step info (``node_examples`` in it).
        node: the node.

    Returns:
        ``(observation, info)`` shaped like a PromptEnv's: the node's ``prompt``, ``blocks``,
        ``demos`` and ``model`` with the program's ``version`` and end-to-end ``scores``; the
        info with ``examples`` replaced by the node's rows and ``node`` set.
    """
    nodes = observation.get("nodes") or {}
    if node not in nodes:
        raise PolicyError(f"The observation has no node {node!r}; nodes: {sorted(nodes)}.")
    view = {key: nodes[node][key] for key in _NODE_KEYS if key in nodes[node]}
    view["version"] = observation.get("version", "")
    view["scores"] = observation.get("scores")
    node_info = dict(info)
    node_info["examples"] = list((info.get("node_examples") or {}).get(node, []))
    node_info["node"] = node
    return view, node_info


def to_node_action(node: str, action: Any) -> tuple[list[NodeEdit] | str | None, str | None, str]:
    """Address a single-call action to ``node``: (edits or directive text, base version, origin).

    Returns ``None`` edits for a no-op (nothing to send).

    Raises:
        PolicyError: the action is of no known single-call form.
    """
    base: str | None = None
    origin = ""
    if isinstance(action, EnvAction):
        base, origin, action = action.base_version, action.origin, action.edits
    if isinstance(action, str):
        edits: list[Edit] = parse_directives(action)
    elif isinstance(action, NodeEdit):
        return [action], base, origin
    elif isinstance(action, EDIT_TYPES):
        edits = [action]  # type: ignore[list-item]
    elif isinstance(action, list | tuple) and all(isinstance(a, NodeEdit) for a in action):
        return list(action), base, origin
    elif isinstance(action, list | tuple) and all(isinstance(a, EDIT_TYPES) for a in action):
        edits = list(action)
    else:
        raise PolicyError(
            f"Expects a single-call action (Edit, list of Edits, directive text or EnvAction), "
            f"got {type(action).__name__}."
        )
    edits = [edit for edit in edits if not isinstance(edit, NoOp)]
    if not edits:
        return None, base, origin
    return [NodeEdit(node=node, edit=edit) for edit in edits], base, origin


class NodeAgent:
    """A single-call policy, unchanged, editing one node of a program.

    Args:
        node: the node it owns.
        policy: any single-call policy (see :class:`policies.base.Policy`).
    """

    def __init__(self, node: str, policy: Any) -> None:
        self.node = node
        self.policy = policy
        self._last: tuple[Observation, Any] | None = None

    def reset(self, observation: Observation, info: Mapping[str, Any]) -> None:
        """Start an episode at a program observation."""
        self.policy.reset(*node_view(observation, info, self.node))

    def act(
        self, observation: Observation, info: Mapping[str, Any]
    ) -> tuple[list[NodeEdit] | None, str | None, str]:
        """Return the policy's next edits of its node (``None`` for a no-op), base and origin."""
        view, node_info = node_view(observation, info, self.node)
        action = self.policy.act(view, node_info)
        self._last = (view, action)
        edits, base, origin = to_node_action(self.node, action)
        if isinstance(edits, str):  # pragma: no cover - to_node_action parses directive text
            raise PolicyError("internal: directive text was not parsed")
        return edits, base, origin or getattr(self.policy, "name", "")

    def update(self, transition: Transition, reward: float) -> None:
        """Show the policy its own transition, seen through its node, with ``reward``."""
        if self._last is None:
            return
        view, action = self._last
        next_view, next_info = node_view(transition.next_observation, transition.info, self.node)
        self.policy.update(
            Transition(
                view,
                action,
                reward,
                next_view,
                transition.terminated,
                transition.truncated,
                next_info,
            )
        )
        self._last = None


class ProgramCoach(BasePolicy):
    """One coach editing every node of a program through one single-call policy per node.

    Args:
        seed: seeds the coach and, offset per node, each node's policy.
        policy: the single-call policy each node gets (registered name or ``module:Class``).
        policy_kwargs: its keyword arguments.
        mode: ``alternate`` (one node per step, cycling; a node with nothing to try passes
            its turn) or ``joint`` (every node proposes and the edits go out together).
        nodes: the nodes to edit (default: every node of the observation).
    """

    name = "program_coach"

    def __init__(
        self,
        seed: int | None = None,
        *,
        policy: str = "proposer_coach",
        policy_kwargs: Mapping[str, Any] | None = None,
        mode: Literal["alternate", "joint"] = "joint",
        nodes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(seed)
        if mode not in ("alternate", "joint"):
            raise PolicyError(f"Expects mode 'alternate' or 'joint', got {mode!r}.")
        self.policy_name = policy
        self.policy_kwargs = dict(policy_kwargs or {})
        self.mode = mode
        self.nodes = list(nodes) if nodes is not None else None
        self.agents: dict[str, NodeAgent] = {}
        self.turn = 0
        self._acted: list[str] = []
        self._pending_state: dict[str, Any] = {}

    def _ensure_agents(self, observation: Observation) -> None:
        if self.agents:
            return
        names = self.nodes if self.nodes is not None else list(observation.get("nodes") or {})
        for index, node in enumerate(names):
            seed = None if self.seed is None else self.seed * 1000 + index
            inner = make_policy(self.policy_name, seed=seed, **self.policy_kwargs)
            self.agents[node] = NodeAgent(node, inner)
            if node in self._pending_state:
                inner.load_state_dict(self._pending_state.pop(node))

    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Start an episode; every node's policy resets on its view."""
        self._ensure_agents(observation)
        for agent in self.agents.values():
            agent.reset(observation, info)

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return this step's node edits as one :class:`ProgramAction` (see ``mode``)."""
        self._ensure_agents(observation)
        names = list(self.agents)
        order = names if self.mode == "joint" else names[self.turn :] + names[: self.turn]
        edits: list[NodeEdit] = []
        origins: list[str] = []
        self._acted = []
        for node in order:
            node_edits, _, origin = self.agents[node].act(observation, info)
            self._acted.append(node)
            if node_edits:
                edits.extend(node_edits)
                origins.append(f"{node}:{origin}")
                if self.mode == "alternate":
                    break
        self.turn = (names.index(self._acted[-1]) + 1) % len(names) if self._acted else 0
        return ProgramAction(edits=edits, origin=f"{self.name}[{', '.join(origins)}]")

    def update(self, transition: Transition) -> None:
        """Every node that acted sees the step, with the program's reward."""
        for node in self._acted:
            self.agents[node].update(transition, transition.reward)
        self._acted = []

    def state_dict(self) -> dict[str, Any]:
        """Return the turn and every node policy's memory."""
        return {
            **super().state_dict(),
            "turn": self.turn,
            "nodes": {node: agent.policy.state_dict() for node, agent in self.agents.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (node policies restore on first use)."""
        super().load_state_dict(state)
        self.turn = int(state.get("turn", 0))
        saved = dict(state.get("nodes") or {})
        for node, agent in self.agents.items():
            if node in saved:
                agent.policy.load_state_dict(saved.pop(node))
        self._pending_state = saved


class AgentTeam(BasePolicy):
    """A team of single-call policies, one per node, for ``selfimprove_rl/ProgramAgents-v0``.

    Every step every agent acts on its own node (its view of the program); the env applies
    the edits together and rewards each agent (by default with its difference reward, see
    :mod:`envs.multi_agent`), which is what each agent's policy learns from.

    Args:
        seed: seeds the team and, offset per agent, each agent's policy.
        policy: the single-call policy each agent gets (registered name or ``module:Class``).
        policy_kwargs: its keyword arguments.
    """

    name = "agent_team"

    def __init__(
        self,
        seed: int | None = None,
        *,
        policy: str = "proposer_coach",
        policy_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(seed)
        self.policy_name = policy
        self.policy_kwargs = dict(policy_kwargs or {})
        self.agents: dict[str, NodeAgent] = {}
        self._pending_state: dict[str, Any] = {}

    def _ensure_agents(self, observation: Observation) -> None:
        if self.agents:
            return
        for index, node in enumerate(observation.get("nodes") or {}):
            seed = None if self.seed is None else self.seed * 1000 + index
            inner = make_policy(self.policy_name, seed=seed, **self.policy_kwargs)
            self.agents[node] = NodeAgent(node, inner)
            if node in self._pending_state:
                inner.load_state_dict(self._pending_state.pop(node))

    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Start an episode; every agent's policy resets on its view."""
        self._ensure_agents(observation)
        for agent in self.agents.values():
            agent.reset(observation, info)

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return ``{agent: its single-call action}`` (a no-op agent sends nothing)."""
        self._ensure_agents(observation)
        actions: dict[str, Any] = {}
        for node, agent in self.agents.items():
            edits, _, _ = agent.act(observation, info)
            actions[node] = edits
        return actions

    def update(self, transition: Transition) -> None:
        """Each agent learns from its own reward (``info["agents"][agent]["reward"]``)."""
        rewards = transition.info.get("agents") or {}
        for node, agent in self.agents.items():
            reward = float((rewards.get(node) or {}).get("reward", transition.reward))
            agent.update(transition, reward)

    def state_dict(self) -> dict[str, Any]:
        """Return every agent policy's memory."""
        return {
            **super().state_dict(),
            "agents": {node: agent.policy.state_dict() for node, agent in self.agents.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (agents restore on first use)."""
        super().load_state_dict(state)
        saved = dict(state.get("agents") or {})
        for node, agent in self.agents.items():
            if node in saved:
                agent.policy.load_state_dict(saved.pop(node))
        self._pending_state = saved
