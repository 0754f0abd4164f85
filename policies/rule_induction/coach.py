"""The rule-induction coach and its proposer: plain changes, chosen by measured reward.

No LLM is involved and nothing models the target: the proposer reads the task from the
references it has seen (which replies exist, which words separate their inputs, which inputs
are typical) and the target's behaviour from its observed answers (which replies it gets
wrong), builds whole candidate changes (:mod:`.candidates`) and ranks them by

``potential × kind weight × 2 (accepted + 1) / (tried + 2)``

where the last factor is what the env's rewards taught it about that kind of change on this
target (1 before any evidence). A change the env rejected is never proposed again on the same
base version; a larger memory re-induces *different* changes (a richer description, other
demonstrations), which are new candidates. The coach tries the best-ranked candidate each
step and answers ``no_change`` only when no candidate is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.base import BasePolicy, Observation, Transition
from policies.proposers import Candidate, no_change_candidate
from policies.rule_induction.candidates import KIND_WEIGHTS, CandidateBuilder, read_situation
from policies.rule_induction.config import RuleInductionConfig
from policies.rule_induction.demos import Encoder, default_encoder
from policies.rule_induction.memory import Memory


class RuleInductionProposer:
    """Proposes plain-language rule and demonstration changes (see the module docstring).

    Args:
        config: options (a model or a plain dict).
        encoder: text → L2-normalized vectors (default: the shipped sentence embedder).
        **options: :class:`RuleInductionConfig` fields, merged over ``config``.
    """

    name = "rule_induction"

    def __init__(
        self,
        config: RuleInductionConfig | Mapping[str, Any] | None = None,
        *,
        encoder: Encoder | None = None,
        **options: Any,
    ) -> None:
        base = (
            config.model_dump() if isinstance(config, RuleInductionConfig) else dict(config or {})
        )
        self.config = RuleInductionConfig.model_validate({**base, **options})
        self._encoder = encoder
        self.memory = Memory(limit=self.config.max_memory, correct_at=self.config.correct_at)
        self.stats: dict[str, list[int]] = {}
        self.banned: dict[str, int] = {}

    def encode(self, texts: Any) -> Any:
        """Embed texts with the configured (or default) encoder."""
        if self._encoder is None:
            self._encoder = default_encoder()
        return self._encoder(list(texts))

    def remember(self, observation: Observation, info: Mapping[str, Any]) -> None:
        """Add the current version's rows of ``info["examples"]`` to memory."""
        version = str(info.get("current_version_id") or observation.get("version") or "")
        self.memory.add_rows(version, info.get("examples"))

    def weight(self, kind: str) -> float:
        """A kind's prior weight times its learned success rate."""
        accepted, tried = self.stats.get(kind, [0, 0])
        return KIND_WEIGHTS.get(kind, 1.0) * 2.0 * (accepted + 1) / (tried + 2)

    def _banned(self, candidate: Candidate) -> bool:
        return f"{candidate.meta['base']}|{candidate.meta['signature']}" in self.banned

    def propose(self, observation: Observation, info: Mapping[str, Any], k: int) -> list[Candidate]:
        """Return up to ``k`` candidates, best first; empty when memory suggests nothing."""
        self.remember(observation, info)
        if k <= 0 or not self.memory.samples:
            return []
        base = str(info.get("current_version_id") or observation.get("version") or "")
        situation = read_situation(observation, self.memory, self.config)
        builder = CandidateBuilder(
            self.name, self.config, self.memory, situation, self.encode, base
        )
        ranked = sorted(
            (c for c in builder.all() if not self._banned(c) and (c.estimate or 0.0) > 0.0),
            key=lambda c: (-(c.estimate or 0.0) * self.weight(c.kind), c.prompt_tokens, c.key()),
        )
        chosen: list[Candidate] = []
        for candidate in ranked:
            if all(c.directive_text() != candidate.directive_text() for c in chosen):
                chosen.append(candidate)
            if len(chosen) >= k:
                break
        return chosen

    def feedback(
        self, candidate: Candidate, reward: float, accepted: bool, info: Mapping[str, Any]
    ) -> None:
        """Learn from the env's verdict on a candidate this proposer made."""
        if candidate.proposer != self.name or "signature" not in candidate.meta:
            return
        won, tried = self.stats.get(candidate.kind, [0, 0])
        self.stats[candidate.kind] = [won + int(accepted), tried + 1]
        if not accepted:
            key = f"{candidate.meta['base']}|{candidate.meta['signature']}"
            self.banned[key] = self.memory.remembered

    def state_dict(self) -> dict[str, Any]:
        """Return memory, kind statistics and bans (JSON-serialisable)."""
        return {
            "memory": self.memory.state_dict(),
            "stats": {kind: list(v) for kind, v in self.stats.items()},
            "banned": dict(self.banned),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.memory.load_state_dict(state["memory"])
        self.stats = {kind: [int(a), int(b)] for kind, (a, b) in state["stats"].items()}
        self.banned = {str(k): int(v) for k, v in state["banned"].items()}


def _replayed(proposer: str, action: Any) -> Candidate:
    """Return a candidate standing for an action this policy has no record of."""
    edits = getattr(action, "edits", action)
    if not isinstance(edits, str | list):
        edits = [edits]
    return Candidate(edits=edits, proposer=proposer, kind="replayed")


class RuleInductionCoach(BasePolicy):
    """The offline coach: the best-ranked change each step, learning which kinds the target takes.

    Args:
        seed: the policy seed (the coach itself is deterministic given its memory).
        encoder: text embedder for picking demonstrations (default: the shipped MiniLM).
        **options: :class:`RuleInductionConfig` fields.

    Example:
        >>> coach = RuleInductionCoach(seed=0, max_demos=8)
        >>> coach.config.max_demos
        8
    """

    name = "rule_induction"

    def __init__(
        self, seed: int | None = None, *, encoder: Encoder | None = None, **options: Any
    ) -> None:
        super().__init__(seed)
        self.config = RuleInductionConfig.model_validate(options)
        self.proposer = RuleInductionProposer(self.config, encoder=encoder)
        self.change_log: list[dict[str, Any]] = []
        self._pending: Candidate | None = None

    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Remember the start version's examples."""
        self.proposer.remember(observation, info)
        self._pending = None

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return the best-ranked candidate as an env action, or ``no_change``."""
        base = str(info.get("current_version_id") or observation.get("version") or "") or None
        proposals = self.proposer.propose(observation, info, k=1)
        candidate = (
            proposals[0] if proposals else no_change_candidate(self.name, "No candidate is left.")
        )
        self._pending = candidate
        return candidate.to_action(base_version=base)

    def update(self, transition: Transition) -> None:
        """Log the tried change with its reward and let the proposer learn from it."""
        candidate, self._pending = self._pending, None
        info = transition.info
        if candidate is None:  # a resumed run replaying a step: log it, learn no bans
            candidate = _replayed(self.name, transition.action)
        accepted = bool(info.get("accepted"))
        self.change_log.append(
            {
                "step": info.get("step"),
                "base": candidate.meta.get("base"),
                "version": info.get("version_id"),
                "kind": candidate.kind,
                "directive": candidate.directive_text(),
                "potential": candidate.estimate,
                "reward": float(transition.reward),
                "accepted": accepted,
            }
        )
        self.proposer.feedback(candidate, float(transition.reward), accepted, info)
        self.proposer.remember(transition.next_observation, info)

    def state_dict(self) -> dict[str, Any]:
        """Return the RNG state, the proposer's memory and the change log."""
        return {
            **super().state_dict(),
            "proposer": self.proposer.state_dict(),
            "change_log": [dict(entry) for entry in self.change_log],
            "pending": self._pending.model_dump(mode="json") if self._pending else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        super().load_state_dict(state)
        self.proposer.load_state_dict(state["proposer"])
        self.change_log = [dict(entry) for entry in state.get("change_log", [])]
        pending = state.get("pending")
        self._pending = Candidate.model_validate(pending) if pending else None
