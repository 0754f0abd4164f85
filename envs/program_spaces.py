"""What may a ProgramEnv observe and do? Its Gymnasium spaces and its action type.

Observations nest a single call's observation per node: ``nodes`` maps every node to its
``prompt``, ``blocks``, ``demos`` and ``model`` (``Text`` spaces over the broad prompt
charset), beside the program ``version``, the end-to-end ``scores`` and, when some nodes
have evals of their own, ``node_scores``. Actions address edits to nodes: a
:class:`~selfimprove_rl.program_state.NodeEdit`, a list of them, a mapping
``{node: edits or directive text}``, directive text with ``NODE:`` sections, or a
:class:`ProgramAction` that also names a base version. As in ``PromptEnv``, every action is
valid in the Gymnasium sense: one that cannot apply is answered with a penalty and a
reason, not an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field

from envs.spaces import GENERIC_LINES, EnvAction, text_space
from selfimprove_rl.program_state import NodeEdit
from selfimprove_rl.prompt import EDIT_TYPES, AddLine, DeleteLine, Edit, NoOp

NodeEdits = list[NodeEdit] | dict[str, list[Edit] | str] | str


class ProgramAction(BaseModel):
    """Edits addressed to nodes, applied to version ``base_version`` (default: current).

    ``edits`` is a list of node edits, a mapping node -> edits (or directive text), or
    directive text with ``NODE:`` sections.
    """

    model_config = ConfigDict(frozen=True)

    edits: NodeEdits
    base_version: str | None = Field(default=None, description="Version to branch from.")
    origin: str = Field(default="", description="Who proposed it, recorded in the registry.")


def program_observation_space(
    node_blocks: Mapping[str, Sequence[str]],
    eval_names: Sequence[str],
    judged_nodes: Sequence[str],
) -> spaces.Dict:
    """Return the observation space of a program with these nodes, blocks and evals.

    Args:
        node_blocks: node name -> its block names.
        eval_names: the end-to-end evals (``scores`` is the aggregate, then each of them).
        judged_nodes: nodes with evals of their own (``node_scores``, one aggregate each).
    """
    entries: dict[str, spaces.Space[Any]] = {
        "nodes": spaces.Dict(
            {
                name: spaces.Dict(
                    {
                        "prompt": text_space(),
                        "blocks": spaces.Dict({block: text_space() for block in blocks}),
                        "demos": spaces.Sequence(
                            spaces.Tuple((text_space(), text_space())), stack=False
                        ),
                        "model": text_space(256),
                    }
                )
                for name, blocks in node_blocks.items()
            }
        ),
        "version": text_space(64),
        "scores": spaces.Box(0.0, 1.0, shape=(1 + len(eval_names),), dtype=np.float32),
    }
    if judged_nodes:
        entries["node_scores"] = spaces.Box(0.0, 1.0, shape=(len(judged_nodes),), dtype=np.float32)
    return spaces.Dict(entries)


class ProgramActionSpace(spaces.Space[Any]):
    """Node edits in any of the accepted forms (see the module docstring).

    ``sample()`` draws one generic edit for one editable node (add a harmless line, delete a
    line, or no-op), the random floor.

    Args:
        editable: node name -> the blocks sampled edits may target.
        seed: the sampling seed.
    """

    def __init__(
        self,
        editable: Mapping[str, Sequence[str]],
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)
        self.editable = {name: tuple(blocks) for name, blocks in editable.items()}

    @property
    def is_np_flattenable(self) -> bool:
        """Edits have no fixed-size numeric form."""
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> list[NodeEdit]:
        """Return one random generic node edit (as a one-element list)."""
        nodes = [name for name, blocks in self.editable.items() if blocks]
        if not nodes:
            return []
        node = nodes[int(self.np_random.integers(len(nodes)))]
        blocks = self.editable[node]
        block = blocks[int(self.np_random.integers(len(blocks)))]
        choice = int(self.np_random.integers(3))
        edit: Edit
        if choice == 0:
            edit = AddLine(text=GENERIC_LINES[int(self.np_random.integers(len(GENERIC_LINES)))])
            edit = edit.model_copy(update={"block": block})
        elif choice == 1:
            edit = DeleteLine(line=int(self.np_random.integers(1, 4)), block=block)
        else:
            edit = NoOp()
        return [NodeEdit(node=node, edit=edit)]

    def contains(self, x: Any) -> bool:
        """Whether ``x`` is one of the accepted action forms."""
        if isinstance(x, str | ProgramAction | EnvAction | NodeEdit):
            return True
        if isinstance(x, list | tuple):
            return all(isinstance(item, NodeEdit) for item in x)
        if isinstance(x, Mapping):
            return all(
                isinstance(key, str)
                and (
                    isinstance(value, str)
                    or isinstance(value, EDIT_TYPES)
                    or (
                        isinstance(value, list | tuple)
                        and all(isinstance(item, EDIT_TYPES) for item in value)
                    )
                )
                for key, value in x.items()
            )
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProgramActionSpace) and other.editable == self.editable

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.editable.items())))

    def __repr__(self) -> str:
        return f"ProgramActionSpace(nodes={ {k: list(v) for k, v in self.editable.items()} })"
