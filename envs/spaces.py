"""What may a PromptEnv observe and do? Its Gymnasium spaces.

Observations are text-native (a ``Dict`` of ``Text`` spaces over a named charset broad enough
for real prompts, unicode included, plus a ``Box`` of scores). Actions are edits, lists of
edits, directive text, or an :class:`EnvAction` naming a base version; every action is
*valid* in the Gymnasium sense because an edit that cannot apply is answered with a penalty,
not an exception.
"""

from __future__ import annotations

import bisect
import functools
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Charset:
    """A named set of characters, given as half-open code-point ranges.

    Membership is answered from the ranges (a compiled character class), so a charset of
    hundreds of thousands of characters costs nothing to build and prints as its name. The
    expanded forms Gymnasium's utilities read (a sorted tuple, a frozenset) are built only on
    first use.

    Args:
        name: what ``repr`` shows.
        ranges: ``(low, high)`` code points, ``low`` included, ``high`` excluded; sorted and
            not overlapping.

    Raises:
        ValueError: the ranges are empty, unsorted, overlapping or outside Unicode.
    """

    name: str
    ranges: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        previous_high = 0
        for low, high in self.ranges:
            if not previous_high <= low < high <= sys.maxunicode + 1:
                raise ValueError(
                    f"Expects sorted, non-overlapping code-point ranges within Unicode, "
                    f"got {self.ranges!r} for charset {self.name!r}."
                )
            previous_high = high

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str]:
        parts = "".join(
            f"\\U{low:08x}-\\U{high - 1:08x}" if high - 1 > low else f"\\U{low:08x}"
            for low, high in self.ranges
        )
        return re.compile(f"[{parts}]*")

    @functools.cached_property
    def _starts(self) -> list[int]:
        return [low for low, _ in self.ranges]

    @functools.cached_property
    def _offsets(self) -> list[int]:
        offsets, total = [], 0
        for low, high in self.ranges:
            offsets.append(total)
            total += high - low
        return offsets

    @functools.cached_property
    def characters(self) -> tuple[str, ...]:
        """Every character, in code-point order (built on first use)."""
        return tuple(chr(code) for low, high in self.ranges for code in range(low, high))

    @functools.cached_property
    def character_set(self) -> frozenset[str]:
        """Every character, as a set (built on first use)."""
        return frozenset(self.characters)

    def covers(self, text: str) -> bool:
        """Return whether every character of ``text`` is in the charset."""
        return self._pattern.fullmatch(text) is not None

    def index(self, char: str) -> int:
        """Return the position of ``char`` in :attr:`characters` (without expanding them).

        Raises:
            KeyError: ``char`` is not in the charset.
        """
        code = ord(char)
        slot = bisect.bisect_right(self._starts, code) - 1
        if slot < 0 or code >= self.ranges[slot][1]:
            raise KeyError(char)
        return self._offsets[slot] + code - self.ranges[slot][0]

    def __contains__(self, char: object) -> bool:
        return isinstance(char, str) and len(char) == 1 and self.covers(char)

    def __len__(self) -> int:
        return sum(high - low for low, high in self.ranges)

    def __repr__(self) -> str:
        return f"Charset({self.name!r}, {len(self)} characters)"


PROMPT_CHARSET = Charset(
    "prompt",
    (
        (0x09, 0x0B),  # tab, newline
        (0x0D, 0x0E),  # carriage return
        (0x20, 0x7F),  # printable ASCII
        (0xA0, 0xD800),  # Latin-1 to Hangul; surrogates excluded
        (0xE000, 0xFFFE),  # private use to specials; the two noncharacters excluded
        (0x10000, 0x1FB00),  # supplementary scripts, symbols and emoji
    ),
)
"""What a prompt may hold: tab, newlines, printable ASCII and Unicode (emoji included)."""


class CharsetText(spaces.Text):
    """A Gymnasium ``Text`` space over a named :class:`Charset`.

    Behaves as ``Text`` (same bounds, ``contains``, ``sample``, flattening), but membership is
    checked against the charset's ranges and ``repr`` names the charset instead of listing
    every character (a plain ``Text`` over :data:`PROMPT_CHARSET` prints 638,633 characters
    and takes ~0.15 s to build).

    Args:
        max_length: the longest text, in characters.
        min_length: the shortest text.
        charset: the allowed characters.
        seed: the sampling seed.
    """

    def __init__(
        self,
        max_length: int,
        *,
        min_length: int = 0,
        charset: Charset = PROMPT_CHARSET,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        if not 0 <= min_length <= max_length:
            raise ValueError(
                f"Expects 0 <= min_length <= max_length, got {min_length} and {max_length}."
            )
        self.min_length = int(min_length)
        self.max_length = int(max_length)
        self.charset = charset
        spaces.Space.__init__(self, dtype=str, seed=seed)

    def contains(self, x: Any) -> bool:
        """Return whether ``x`` is a string of allowed length made of charset characters."""
        return (
            isinstance(x, str)
            and self.min_length <= len(x) <= self.max_length
            and self.charset.covers(x)
        )

    @property
    def character_set(self) -> frozenset[str]:
        """The characters as a set (built on first use; Gymnasium's sampler reads its size)."""
        return self.charset.character_set

    @property
    def character_list(self) -> tuple[str, ...]:
        """The characters in code-point order (built on first use)."""
        return self.charset.characters

    def character_index(self, char: str) -> np.int32:
        """Return the position of ``char`` in :attr:`character_list` (used when flattening)."""
        return np.int32(self.charset.index(char))

    @property
    def characters(self) -> str:
        """All characters as one string (built on use)."""
        return "".join(self.charset.characters)

    def __repr__(self) -> str:
        return f"CharsetText({self.min_length}, {self.max_length}, charset={self.charset.name})"

    def __eq__(self, other: object, /) -> bool:
        if isinstance(other, CharsetText):
            return (
                self.min_length == other.min_length
                and self.max_length == other.max_length
                and self.charset == other.charset
            )
        return super().__eq__(other)


@functools.cache
def text_space(max_length: int = MAX_PROMPT_CHARS) -> CharsetText:
    """Return a text space over :data:`PROMPT_CHARSET` from 0 to ``max_length`` chars.

    Cached: spaces are read-only, so every env and key shares one instance per length.
    """
    return CharsetText(max_length, min_length=0, charset=PROMPT_CHARSET)


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
