"""What may a PromptEnv observe and do? Its Gymnasium spaces.

Observations are text-native (a ``Dict`` of ``Text`` spaces with a charset broad enough for
real prompts, unicode included, plus a ``Box`` of scores). Actions are edits, lists of
edits, directive text, or an :class:`EnvAction` naming a base version; every action is
*valid* in the Gymnasium sense because an edit that cannot apply is answered with a penalty,
not an exception.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field

from selfimprove_rl.prompt import EDIT_TYPES, AddLine, DeleteLine, Edit, NoOp, SetModel

MAX_PROMPT_CHARS = 32_000

# Generic instruction lines that the action space samples from; they are harmless to any
# prompt, which makes `action_space.sample()` a meaningful random floor.
GENERIC_LINES: tuple[str, ...] = (
    "Keep replies to one short sentence.",
    "Answer in a friendly, upbeat tone.",
    "Do not ask the user follow-up questions.",
    "Reply in plain text without markdown.",
    "Restate the user's topic before answering.",
    "If unsure, give a polite generic reply.",
)


class EnvAction(BaseModel):
    """An action with its base: apply ``edits`` to version ``base_version`` (default: current).

    ``edits`` may be edit models or coach directive text.
    """

    model_config = ConfigDict(frozen=True)

    edits: list[Edit] | str
    base_version: str | None = Field(default=None, description="Version to branch from.")
    origin: str = Field(default="", description="Who proposed it, recorded in the registry.")


@functools.cache
def prompt_charset() -> str:
    """Return the characters a prompt may hold: tab, newlines, printable ASCII and unicode.

    Surrogates and the private-use plane ends are excluded; emoji are included.
    """
    ranges = [
        (0x09, 0x0A),
        (0x0A, 0x0B),
        (0x0D, 0x0E),
        (0x20, 0x7F),
        (0xA0, 0xD800),
        (0xE000, 0xFFFE),
        (0x10000, 0x1FB00),
    ]
    return "".join(chr(code) for low, high in ranges for code in range(low, high))


@functools.cache
def text_space(max_length: int = MAX_PROMPT_CHARS) -> spaces.Text:
    """Return a ``Text`` space over :func:`prompt_charset` from 0 to ``max_length`` chars.

    Cached: building the character index of a broad charset costs ~0.2 s, and spaces are
    read-only, so every env and key shares one instance per length.
    """
    return spaces.Text(max_length=max_length, min_length=0, charset=prompt_charset())


def observation_space(block_names: Sequence[str], eval_names: Sequence[str]) -> spaces.Dict:
    """Return the observation space for a prompt with these blocks and evals.

    Keys: ``prompt`` (rendered system message), ``blocks`` (each block's lines joined by
    newlines), ``demos`` (a tuple of ``(input, output)`` demonstration pairs), ``model``,
    ``version`` (the version id), ``scores`` (aggregate then each eval, in [0, 1], on the
    latest minibatch).
    """
    return spaces.Dict(
        {
            "prompt": text_space(),
            "blocks": spaces.Dict({name: text_space() for name in block_names}),
            "demos": spaces.Sequence(spaces.Tuple((text_space(), text_space())), stack=False),
            "model": text_space(256),
            "version": text_space(64),
            "scores": spaces.Box(0.0, 1.0, shape=(1 + len(eval_names),), dtype=np.float32),
        }
    )


class PromptActionSpace(spaces.Space[Any]):
    """Edits, edit lists, directive text or :class:`EnvAction` values.

    ``sample()`` draws a random edit from a small generic pool (add a generic line to an
    editable block, delete a line, switch to another allowed model, or no-op).

    Args:
        editable_blocks: blocks that sampled edits may target.
        models: models a sampled ``SetModel`` may choose.
        seed: the sampling seed.
    """

    def __init__(
        self,
        editable_blocks: Sequence[str],
        models: Sequence[str] = (),
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)
        self.editable_blocks = tuple(editable_blocks)
        self.models = tuple(models)

    @property
    def is_np_flattenable(self) -> bool:
        """Edits have no fixed-size numeric form; SB3 users wrap the env (see ``envs.sb3``)."""
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> Edit:
        """Return a random edit from the generic pool."""
        choice = int(self.np_random.integers(4))
        if choice == 0 and self.editable_blocks:
            block = self.editable_blocks[int(self.np_random.integers(len(self.editable_blocks)))]
            text = GENERIC_LINES[int(self.np_random.integers(len(GENERIC_LINES)))]
            return AddLine(text=text, block=block)
        if choice == 1 and self.editable_blocks:
            block = self.editable_blocks[int(self.np_random.integers(len(self.editable_blocks)))]
            return DeleteLine(line=int(self.np_random.integers(1, 4)), block=block)
        if choice == 2 and len(self.models) > 1:
            return SetModel(model=self.models[int(self.np_random.integers(len(self.models)))])
        return NoOp()

    def contains(self, x: Any) -> bool:
        """Return whether ``x`` is an edit, a list of edits, directive text or an EnvAction."""
        if isinstance(x, str | EnvAction):
            return True
        if isinstance(x, list | tuple):
            return all(isinstance(item, EDIT_TYPES) for item in x)
        return isinstance(x, EDIT_TYPES)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PromptActionSpace)
            and other.editable_blocks == self.editable_blocks
            and other.models == self.models
        )

    def __hash__(self) -> int:
        return hash((self.editable_blocks, self.models))

    def __repr__(self) -> str:
        return f"PromptActionSpace(blocks={list(self.editable_blocks)}, models={list(self.models)})"
