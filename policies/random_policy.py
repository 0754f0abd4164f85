"""RandomPolicy: random valid edits from the operator pool, the floor every policy must beat.

Each step it draws one candidate from :class:`~policies.proposers.OperatorProposer`: a generic
instruction line (brevity, tone, format, refusal, routing) added to an editable block, the
deletion of an existing line (only line numbers that exist), or a switch to another allowed
model (only when the env allows several: pass ``models``, or let the env report
``info["allowed_models"]``). It is seeded, never learns, and its state is its generator.

Example:
    >>> policy = RandomPolicy(seed=1)
    >>> action = policy.act({"blocks": {"sop": "Be kind."}, "model": "sim-large"}, {})
    >>> action.origin.startswith("operators:")
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policies.base import BasePolicy, Observation
from policies.proposers import OperatorProposer, no_change_candidate


class RandomPolicy(BasePolicy):
    """Random valid edits; seeded.

    Args:
        seed: seeds the draws (same seed, same observations: same actions).
        blocks: blocks it may edit (default: every observed block).
        models: models a switch may choose (default: what the env reports, if anything).
        weights: relative odds of ``add``, ``delete`` and ``model`` edits.
        frozen_blocks: blocks never to edit (the env rejects such edits anyway).
    """

    name = "random"

    def __init__(
        self,
        seed: int | None = None,
        *,
        blocks: Sequence[str] | None = None,
        models: Sequence[str] | None = None,
        weights: tuple[float, float, float] = (0.6, 0.3, 0.1),
        frozen_blocks: Sequence[str] = (),
    ) -> None:
        super().__init__(seed)
        self.frozen_blocks = tuple(frozen_blocks)
        self.blocks = tuple(blocks) if blocks is not None else None
        self.proposer = OperatorProposer(
            seed=int(self.rng.integers(2**31)), blocks=None, models=models, weights=weights
        )
        self.proposed = 0

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return one random valid edit of the current version."""
        names = [
            name
            for name in dict(observation.get("blocks") or {})
            if name not in self.frozen_blocks and (self.blocks is None or name in self.blocks)
        ]
        self.proposer.blocks = tuple(names) if names else None
        candidates = self.proposer.propose(observation, info, k=1)
        self.proposed += 1
        candidate = (
            candidates[0] if candidates else no_change_candidate(self.proposer.name, "Empty pool.")
        )
        return candidate.to_action()

    def state_dict(self) -> dict[str, Any]:
        """Return both generators' states and the draw count."""
        return {
            **super().state_dict(),
            "proposer": self.proposer.state_dict(),
            "proposed": self.proposed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        super().load_state_dict(state)
        self.proposer.load_state_dict(state["proposer"])
        self.proposed = int(state.get("proposed", 0))
