"""What is the prompt? A structured system prompt, the edits a coach can make, and their parser.

A :class:`PromptState` is a model name plus named blocks of lines (a general block, SOP
blocks...). Any block can be frozen. It renders to the system message, has a stable
fingerprint, and diffs against another state.

A state may also carry few-shot demonstrations (:class:`~selfimprove_rl.checkpoint.Demo`):
user/assistant turns sent after the system message and before the live conversation.

An :data:`Edit` is one of :class:`AddLine`, :class:`EditLine`, :class:`DeleteLine`,
:class:`ReplaceBlock`, :class:`AddDemo`, :class:`SwapDemo`, :class:`RemoveDemo`,
:class:`SetModel`, :class:`NoOp` (a pydantic discriminated union on ``kind``).
:func:`apply` returns a new state or raises :class:`InvalidEdit` naming the block, the line
and the reason; states are immutable, so a failed edit list never leaves a half-applied
state behind.

Coach directive text (one directive per line, keywords case-insensitive)::

    BLOCK: sop               switch the target block for the directives that follow
    ADD: text                append a line
    EDIT: 3 -> text          replace line 3
    DEL: 2                   delete line 2
    REPLACE:                 replace the whole block with the lines that follow
    DEMO: "in" -> "out"      append a demonstration (JSON string literals)
    DEMO 2: "in" -> "out"    swap demonstration 2 for a new one
    DEL_DEMO: 2              remove demonstration 2
    MODEL: sim-large         switch model
    no_change                nothing to change

Line numbers in directive text refer to the prompt *as shown to the coach* (``ADD 3: text``
puts the new line where shown line 3 is): :func:`parse_directives` orders edits (line edits,
then deletions and positioned additions from the bottom up, then appended lines) so earlier
directives never shift the lines later ones name. Demonstration numbers work the same way.
Line numbers are ASCII digits (at most :data:`MAX_NUMBER_DIGITS`); ``DEL: ²`` is an
unparseable directive, not a crash.

Line text is checked where edits apply, however the edit was made (parsed or constructed):
it must be one non-blank line of encodable text (no lone surrogates, no control characters
but tab) and must not look like a markdown heading (``## Rules``), because a heading line
would start a new block when the rendered prompt is read back with
:meth:`PromptState.from_text`. Rejecting it (rather than escaping it) keeps the prompt the
model sees exactly the text the coach wrote; ``BLOCK:`` is how a coach targets a section.
With these rules ``PromptState.from_text(state.render())`` gives back every non-empty block
of any state made by :meth:`PromptState.from_text` and :func:`apply`.

Example:
    >>> state = PromptState.from_text("Be kind.", model="sim-large")
    >>> new = apply(state, parse_directives('ADD: if input mentions tea: respond "Tea!"'))
    >>> print(new.render())
    Be kind.
    <BLANKLINE>
    ## SOP
    if input mentions tea: respond "Tea!"
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from selfimprove_rl.checkpoint import Action, Demo
from selfimprove_rl.errors import InvalidEdit, unknown_name_message

DEFAULT_EDIT_BLOCK = "sop"
DEMOS = "demos"
SOP_TITLE = "## SOP"
MAX_NUMBER_DIGITS = 9
"""Longest line number a directive may give (larger ones are unparseable, not a crash)."""
_HEADING = re.compile(r"^#{1,6}\s+\S.*$")
_BLOCK_NAME = re.compile(r"[a-z0-9_\-]+")
# str.splitlines() boundaries: any of them would split a line when the prompt is re-read.
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# Other C0/C1 controls and DEL (tab allowed), and lone surrogates (not encodable as UTF-8).
_UNPRINTABLE = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")


def block_name_for(title: str) -> str:
    """Return the block name for a heading line: lowercase words joined by underscores.

    Example:
        >>> block_name_for("## Standard Operating Procedure")
        'standard_operating_procedure'
    """
    words = re.findall(r"[a-z0-9]+", title.lower())
    return "_".join(words) or "block"


class Block(BaseModel):
    """A named group of prompt lines, rendered under an optional heading line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_\-]+$")
    title: str | None = Field(default=None, description="Heading line rendered above the lines.")
    lines: tuple[str, ...] = ()
    frozen: bool = False

    def render(self) -> str:
        """Return the block as text; an empty block renders as the empty string."""
        if not self.lines:
            return ""
        body = "\n".join(self.lines)
        return f"{self.title}\n{body}" if self.title else body

    def numbered(self) -> str:
        """Return the lines numbered from 1, as a coach sees them."""
        return "\n".join(f"{i}. {line}" for i, line in enumerate(self.lines, start=1))


class PromptState(BaseModel):
    """The optimizable state of one call: blocks of system-prompt lines, demos and a model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    blocks: tuple[Block, ...] = Field(min_length=1)
    model: str
    demos: tuple[Demo, ...] = Field(
        default=(), description="Few-shot demonstrations sent as user/assistant turns."
    )

    @model_validator(mode="after")
    def _block_names_unique(self) -> PromptState:
        names = [b.name for b in self.blocks]
        dupes = sorted({name for name in names if names.count(name) > 1})
        if dupes:
            raise ValueError(f"block names must be unique; duplicated: {dupes}")
        return self

    def render(self) -> str:
        """Return the system message: non-empty blocks joined by a blank line."""
        return "\n\n".join(text for text in (b.render() for b in self.blocks) if text)

    def render_demos(self) -> str:
        """Return the demonstrations as numbered text (empty when there are none).

        Example:
            >>> state = PromptState.from_text("Hi.", model="m")
            >>> print(apply(state, AddDemo(input="a", output="b")).render_demos())
            demo 1: user: "a"
            demo 1: assistant: "b"
        """
        lines: list[str] = []
        for number, demo in enumerate(self.demos, start=1):
            lines.append(f"demo {number}: user: {json.dumps(demo.input, ensure_ascii=False)}")
            lines.append(f"demo {number}: assistant: {json.dumps(demo.output, ensure_ascii=False)}")
        return "\n".join(lines)

    def fingerprint(self) -> str:
        """Return a stable 16-hex id of the blocks (names, titles, lines, frozen), demos, model."""
        payload: dict[str, object] = {
            "blocks": [[b.name, b.title, list(b.lines), b.frozen] for b in self.blocks],
            "model": self.model,
        }
        if self.demos:  # absent when empty, so states without demos keep their old ids
            payload["demos"] = [[d.input, d.output] for d in self.demos]
        # surrogatepass: a lone surrogate read from a JSON file must not crash the id.
        text = json.dumps(payload, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    @property
    def block_names(self) -> list[str]:
        """Names of the blocks, in order."""
        return [b.name for b in self.blocks]

    @property
    def default_block(self) -> str:
        """The block edits go to when they name none: ``sop`` if present, else the last."""
        return (
            DEFAULT_EDIT_BLOCK if DEFAULT_EDIT_BLOCK in self.block_names else self.blocks[-1].name
        )

    def block(self, name: str) -> Block:
        """Return the block called ``name``.

        Raises:
            InvalidEdit: no such block (reason ``unknown_block``).
        """
        for candidate in self.blocks:
            if candidate.name == name:
                return candidate
        raise InvalidEdit(
            unknown_name_message("block", name, self.block_names),
            reason="unknown_block",
            block=name,
        )

    def with_block(self, block: Block) -> PromptState:
        """Return a copy with the block of the same name replaced."""
        return self.model_copy(
            update={"blocks": tuple(block if b.name == block.name else b for b in self.blocks)}
        )

    def with_frozen(self, names: Collection[str]) -> PromptState:
        """Return a copy in which exactly the blocks in ``names`` are frozen.

        Raises:
            InvalidEdit: a name is not a block (reason ``unknown_block``).
        """
        if isinstance(names, str):
            names = [names]
        for name in names:
            self.block(name)
        return self.model_copy(
            update={
                "blocks": tuple(
                    b.model_copy(update={"frozen": b.name in names}) for b in self.blocks
                )
            }
        )

    def to_action(self, base: Action) -> Action:
        """Return ``base`` with this state's rendered system prompt, demos and model."""
        return base.model_copy(
            update={"system_prompt": self.render(), "model": self.model, "demos": self.demos}
        )

    @classmethod
    def from_action(cls, action: Action, model: str | None = None) -> PromptState:
        """Parse a logged action's system prompt into blocks and keep its demos.

        Args:
            action: the logged action.
            model: the model of the state (default: the action's).
        """
        state = cls.from_text(action.system_prompt, model=model or action.model)
        return state.model_copy(update={"demos": tuple(action.demos)})

    @classmethod
    def from_text(cls, text: str, model: str, *, ensure_sop_block: bool = True) -> PromptState:
        """Parse a system prompt into blocks at its markdown headings.

        Text before the first heading becomes the ``general`` block (no heading); each heading
        starts a block named after it. Blank lines around headings are dropped and restored by
        :meth:`render` as one blank line, so ``from_text(t).render() == t`` for prompts that
        separate sections by one blank line. With ``ensure_sop_block`` an empty ``sop`` block
        (heading ``## SOP``) is appended when none exists, to give rules a home; empty blocks
        render as nothing, so the rendered prompt is unchanged.

        Args:
            text: the system prompt as logged.
            model: the model the prompt was used with.
            ensure_sop_block: add an empty ``sop`` block when there is none.

        Returns:
            The parsed state.
        """
        sections: list[tuple[str | None, list[str]]] = [(None, [])]
        for line in text.split("\n"):
            if _HEADING.match(line):
                sections.append((line.rstrip(), []))
            else:
                sections[-1][1].append(line)
        blocks: list[Block] = []
        for title, lines in sections:
            while lines and not lines[0].strip():
                lines.pop(0)
            while lines and not lines[-1].strip():
                lines.pop()
            if title is None and not lines:
                continue
            name = "general" if title is None else block_name_for(title)
            suffix = 2
            base_name = name
            while name in {b.name for b in blocks}:
                name = f"{base_name}_{suffix}"
                suffix += 1
            blocks.append(Block(name=name, title=title, lines=tuple(lines)))
        if ensure_sop_block and DEFAULT_EDIT_BLOCK not in {b.name for b in blocks}:
            blocks.append(Block(name=DEFAULT_EDIT_BLOCK, title=SOP_TITLE))
        if not blocks:
            blocks.append(Block(name="general"))
        return cls(blocks=tuple(blocks), model=model)


class AddLine(BaseModel):
    """Insert a line into a block (append when ``position`` is None)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["add_line"] = "add_line"
    text: str
    block: str | None = None
    position: int | None = Field(default=None, description="1-based; the new line's number.")


class EditLine(BaseModel):
    """Replace line ``line`` (1-based) of a block with ``text``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["edit_line"] = "edit_line"
    line: int
    text: str
    block: str | None = None


class DeleteLine(BaseModel):
    """Delete line ``line`` (1-based) of a block."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["delete_line"] = "delete_line"
    line: int
    block: str | None = None


class ReplaceBlock(BaseModel):
    """Replace every line of a block."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["replace_block"] = "replace_block"
    lines: tuple[str, ...]
    block: str | None = None


class AddDemo(BaseModel):
    """Append a demonstration (it becomes the last turns before the live conversation)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["add_demo"] = "add_demo"
    input: str
    output: str


class SwapDemo(BaseModel):
    """Replace demonstration ``index`` (1-based) with a new one."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["swap_demo"] = "swap_demo"
    index: int
    input: str
    output: str


class RemoveDemo(BaseModel):
    """Remove demonstration ``index`` (1-based)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["remove_demo"] = "remove_demo"
    index: int


class SetModel(BaseModel):
    """Switch the model the call runs on."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["set_model"] = "set_model"
    model: str


class NoOp(BaseModel):
    """Change nothing (a coach may judge the prompt good as it is)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["no_op"] = "no_op"


Edit = Annotated[
    AddLine
    | EditLine
    | DeleteLine
    | ReplaceBlock
    | AddDemo
    | SwapDemo
    | RemoveDemo
    | SetModel
    | NoOp,
    Field(discriminator="kind"),
]
EDIT_TYPES: tuple[type[BaseModel], ...] = (
    AddLine,
    EditLine,
    DeleteLine,
    ReplaceBlock,
    AddDemo,
    SwapDemo,
    RemoveDemo,
    SetModel,
    NoOp,
)
DEMO_EDIT_TYPES: tuple[type[BaseModel], ...] = (AddDemo, SwapDemo, RemoveDemo)
EDIT_LIST_ADAPTER: TypeAdapter[list[Edit]] = TypeAdapter(list[Edit])


def check_text(
    text: object,
    *,
    what: str = "Line text",
    block: str | None = None,
    line: int | None = None,
    multiline: bool = False,
    where: str | None = None,
) -> str:
    r"""Return ``text`` stripped, or raise :class:`InvalidEdit` saying what is wrong with it.

    The one check every text an edit puts into a prompt goes through (lines, model names,
    demonstrations): a non-blank ``str`` of encodable characters, without control
    characters other than tab, and one line unless ``multiline``.

    Args:
        text: the value to check.
        what: how messages name it (``"Line text"``, ``"Model name"``...).
        block: the block the edit targets, for the error.
        line: the line the edit targets, for the error.
        multiline: allow line breaks (``\n``; a lone ``\r`` is still rejected).
        where: how messages locate the text (default: from ``block`` and ``line``).

    Returns:
        The text with surrounding whitespace removed.

    Raises:
        InvalidEdit: ``malformed_edit`` (not a string), ``empty_text``, ``multiline_text``
            or ``invalid_text`` (a lone surrogate or a control character).

    Example:
        >>> check_text("  be brief ")
        'be brief'
    """
    if where is not None:
        where = f" ({where})"
    else:
        where = f" (block {block!r}, line {line})" if block is not None else ""
    if not isinstance(text, str):
        raise InvalidEdit(
            f"{what} must be a string{where}, got {type(text).__name__}.",
            reason="malformed_edit",
            block=block,
            line=line,
        )
    if not text.strip():
        hint = "; use DEL to remove a line" if block is not None else ""
        raise InvalidEdit(
            f"{what} is empty{where}{hint}.",
            reason="empty_text",
            block=block,
            line=line,
        )
    body = text.strip()
    breaks = _LINE_BREAK.findall(body.replace("\r\n", "\n") if multiline else body)
    if breaks and not (multiline and set(breaks) == {"\n"}):
        raise InvalidEdit(
            f"{what} spans several lines{where}; add one line per directive or use REPLACE.",
            reason="multiline_text",
            block=block,
            line=line,
        )
    bad = _UNPRINTABLE.search(body)
    if bad:
        kind = "a lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "a control character"
        raise InvalidEdit(
            f"{what} holds {kind} ({bad.group()!r} at position {bad.start()}){where}; "
            "write plain text.",
            reason="invalid_text",
            block=block,
            line=line,
        )
    return body


def _check_line_text(text: object, block: str, line: int | None) -> str:
    body = check_text(text, block=block, line=line)
    if _HEADING.match(body):
        raise InvalidEdit(
            f"Line text {_preview(body)} looks like a markdown heading (block {block!r}, line "
            f"{line}); it would start a new block when the prompt is read back. Drop the "
            "leading '#', or use BLOCK: to target a section.",
            reason="heading_text",
            block=block,
            line=line,
        )
    return body


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def parse_number(text: str) -> int | None:
    """Return the value of ASCII digits (at most :data:`MAX_NUMBER_DIGITS`), else None.

    ``int()`` alone would accept ``"٣"`` and raise on ``"²"`` or a 5,000-digit string; a
    directive's numbers go through this instead.

    Example:
        >>> parse_number("12"), parse_number("²"), parse_number("9" * 5000)
        (12, None, None)
    """
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit() or len(stripped) > MAX_NUMBER_DIGITS:
        return None
    return int(stripped)


def _check_line_number(line: object, block: Block, *, allow_end: bool = False) -> int:
    if not isinstance(line, int) or isinstance(line, bool):
        raise InvalidEdit(
            f"Line number must be an int, got {type(line).__name__} (block {block.name!r}).",
            reason="malformed_edit",
            block=block.name,
        )
    upper = len(block.lines) + (1 if allow_end else 0)
    if not 1 <= line <= upper:
        shown = f"1..{upper}" if upper else "none (the block is empty)"
        # str() of an int over 4,300 digits raises; such a number is only ever out of range.
        number = str(line) if abs(line) < 10**MAX_NUMBER_DIGITS else "(a huge number)"
        raise InvalidEdit(
            f"Line {number} is out of range for block {block.name!r}; valid lines: {shown}.",
            reason="line_out_of_range",
            block=block.name,
            line=line if abs(line) < 10**MAX_NUMBER_DIGITS else None,
        )
    return line


def _trim_blank_edges(lines: list[str]) -> tuple[str, ...]:
    """Drop blank lines at a block's edges, as :meth:`PromptState.from_text` does."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return tuple(lines[start:end])


_EDIT_ADAPTER: TypeAdapter[Edit] = TypeAdapter(Edit)


def _validated(edit: object) -> Edit:
    """Re-validate an edit (one built with ``model_construct`` or holding junk) or a dict."""
    if isinstance(edit, BaseModel):
        fields = dict(vars(edit))
    elif isinstance(edit, Mapping):
        fields = dict(edit)
    else:
        raise InvalidEdit(
            f"Expects an edit ({', '.join(t.__name__ for t in EDIT_TYPES)}), got "
            f"{type(edit).__name__}; parse directive text with parse_directives().",
            reason="malformed_edit",
        )
    try:
        return _EDIT_ADAPTER.validate_python(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'][1:]) or 'kind'}: {error['msg']}"
            if error["loc"] and error["loc"][0] == fields.get("kind")
            else f"{'.'.join(str(p) for p in error['loc']) or 'kind'}: {error['msg']}"
            for error in exc.errors()[:3]
        )
        raise InvalidEdit(
            f"Malformed {type(edit).__name__} edit ({problems}).", reason="malformed_edit"
        ) from exc


def _check_demo_number(index: int, demos: Sequence[Demo]) -> None:
    upper = len(demos)
    if not 1 <= index <= upper:
        shown = f"1..{upper}" if upper else "none (there are no demos)"
        huge = abs(index) >= 10**MAX_NUMBER_DIGITS  # str() of a 4,300-digit int raises
        raise InvalidEdit(
            f"Demo {'(a huge number)' if huge else index} is out of range; valid demo "
            f"numbers: {shown}.",
            reason="demo_out_of_range",
            block=DEMOS,
            line=None if huge else index,
        )


def _check_demo_text(text: str, field: str, index: int | None) -> str:
    if not text.strip():
        raise InvalidEdit(
            f"Demo {field} is empty (demo {index}); a demonstration needs both turns.",
            reason="empty_text",
            block=DEMOS,
            line=index,
        )
    # A turn may span lines; it may not hold a lone surrogate or control characters.
    return check_text(
        text, what=f"Demo {field}", block=DEMOS, line=index, multiline=True, where=f"demo {index}"
    )


def _apply_demo(state: PromptState, edit: AddDemo | SwapDemo | RemoveDemo) -> PromptState:
    demos = list(state.demos)
    if isinstance(edit, RemoveDemo):
        _check_demo_number(edit.index, demos)
        del demos[edit.index - 1]
    else:
        index = edit.index if isinstance(edit, SwapDemo) else len(demos) + 1
        if isinstance(edit, SwapDemo):
            _check_demo_number(index, demos)
        demo = Demo(
            input=_check_demo_text(edit.input, "input", index),
            output=_check_demo_text(edit.output, "output", index),
        )
        if isinstance(edit, SwapDemo):
            demos[index - 1] = demo
        else:
            demos.append(demo)
    return state.model_copy(update={"demos": tuple(demos)})


def _apply_one(
    state: PromptState, raw_edit: Edit, allowed_models: Collection[str] | None
) -> PromptState:
    edit = _validated(raw_edit)
    if isinstance(edit, NoOp):
        return state
    if isinstance(edit, AddDemo | SwapDemo | RemoveDemo):
        return _apply_demo(state, edit)
    if isinstance(edit, SetModel):
        check_text(edit.model, what="Model name")
        if allowed_models is not None and edit.model not in allowed_models:
            raise InvalidEdit(
                unknown_name_message("model", edit.model, allowed_models),
                reason="unknown_model",
            )
        return state.model_copy(update={"model": edit.model})
    block = state.block(edit.block or state.default_block)
    if block.frozen:
        editable = ", ".join(b.name for b in state.blocks if not b.frozen) or "none is editable"
        raise InvalidEdit(
            f"Block {block.name!r} is frozen; edit another block ({editable}).",
            reason="frozen_block",
            block=block.name,
            line=getattr(edit, "line", None),
        )
    lines = list(block.lines)
    if isinstance(edit, AddLine):
        position = edit.position if edit.position is not None else len(lines) + 1
        _check_line_number(position, block, allow_end=True)
        lines.insert(position - 1, _check_line_text(edit.text, block.name, position))
    elif isinstance(edit, EditLine):
        _check_line_number(edit.line, block)
        lines[edit.line - 1] = _check_line_text(edit.text, block.name, edit.line)
    elif isinstance(edit, DeleteLine):
        _check_line_number(edit.line, block)
        del lines[edit.line - 1]
    else:
        lines = [
            _check_line_text(text, block.name, number)
            for number, text in enumerate(edit.lines, start=1)
        ]
    # A deletion can leave a blank line at an edge, which a re-read of the prompt would drop.
    return state.with_block(block.model_copy(update={"lines": _trim_blank_edges(lines)}))


def apply(
    state: PromptState,
    edits: Edit | Sequence[Edit],
    *,
    allowed_models: Collection[str] | None = None,
) -> PromptState:
    """Apply one edit or a list of edits, in order, and return the new state.

    Edits naming no block go to ``state.default_block``.

    Args:
        state: the state to edit; never modified.
        edits: an edit or a sequence applied in order (each sees the previous one's result).
        allowed_models: models a :class:`SetModel` may choose; ``None`` allows any.

    Returns:
        The new state (``state`` itself when nothing changes).

    Raises:
        InvalidEdit: an edit cannot apply, or is not an edit (``malformed_edit``); nothing is
            applied.
    """
    if isinstance(edits, BaseModel | Mapping):
        sequence: Sequence[object] = [edits]
    elif isinstance(edits, str) or not isinstance(edits, Sequence):
        sequence = [edits]  # rejected by _validated with a hint
    else:
        sequence = edits
    result = state
    for edit in sequence:
        result = _apply_one(result, edit, allowed_models)  # type: ignore[arg-type]
    return result


# [0-9], not \d: only ASCII digits are line numbers (\d also matches "٣" and "３").
_DIRECTIVE = re.compile(
    r"^\s*(?:[-*•]\s+|[0-9]+[.)]\s+)?([A-Za-z_]+)\s*([0-9]+)?\s*:\s*(.*)$", re.DOTALL
)
_ARROW = re.compile(r"^\s*([0-9]+)\s*(?:->|→|=>|:)\s*(.*)$", re.DOTALL)
_NO_CHANGE = re.compile(
    r"^\s*(?:[-*•]\s+)?[`\"']?\s*no[_\s-]?changes?\s*[`\"']?\s*[.:]?\s*$", re.IGNORECASE
)


def _parse_error(message: str, number: int, block: str | None) -> InvalidEdit:
    return InvalidEdit(
        f"Directive line {number}: {message}",
        reason="unparseable_directive",
        block=block,
        line=number,
    )


def parse_directives(text: str, *, block: str | None = None) -> list[Edit]:
    r"""Parse coach directive text into edits whose line numbers refer to the prompt as shown.

    Args:
        text: directives, one per line (see the module docstring).
        block: the block directives target until a ``BLOCK:`` line; ``None`` means the
            state's default block at apply time.

    Returns:
        The edits, ordered per block as edits, deletions (bottom up), additions; an empty
        list for ``no_change``.

    Raises:
        InvalidEdit: a line is not a directive (``unparseable_directive``), or two directives
            touch the same line, or ``REPLACE`` is mixed with line edits of its block
            (``conflicting_edits``).

    Example:
        >>> [e.kind for e in parse_directives("DEL: 1\nDEL: 3\nADD: x\nEDIT: 2 -> y")]
        ['edit_line', 'delete_line', 'delete_line', 'add_line']
    """
    groups: dict[str | None, list[Edit]] = {}
    model_edits: list[Edit] = []
    demo_edits: list[Edit] = []
    current = block
    raw_lines = text.strip().split("\n")
    number = 0
    while number < len(raw_lines):
        line = raw_lines[number]
        number += 1
        if not line.strip() or _NO_CHANGE.match(line):
            continue
        match = _DIRECTIVE.match(line)
        if not match:
            raise _parse_error(
                "expected KEYWORD: value (ADD, EDIT, DEL, REPLACE, DEMO, DEL_DEMO, MODEL, BLOCK, "
                "no_change), "
                f"got {line.strip()[:80]!r}",
                number,
                current,
            )
        keyword, inline_number, rest = (
            match.group(1).upper(),
            match.group(2),
            match.group(3).strip(),
        )
        edits = groups.setdefault(current, [])
        spot = _directive_number(inline_number, keyword, number, current)
        if keyword == "BLOCK":
            if not rest:
                raise _parse_error("BLOCK needs a block name", number, current)
            current = rest if _BLOCK_NAME.fullmatch(rest) else block_name_for(rest)
        elif keyword == "ADD":
            edits.append(AddLine(text=rest, block=current, position=spot))
        elif keyword == "EDIT":
            target = _ARROW.match(f"{inline_number}: {rest}" if inline_number else rest)
            if not target:
                raise _parse_error("EDIT needs 'N -> new text'", number, current)
            line_number = _directive_number(target.group(1), keyword, number, current)
            assert line_number is not None  # the pattern matched digits
            edits.append(EditLine(line=line_number, text=target.group(2).strip(), block=current))
        elif keyword in {"DEL", "DELETE"}:
            value = spot if inline_number else parse_number(rest)
            if value is None:
                raise _parse_error(
                    f"DEL needs a line number (1 to {MAX_NUMBER_DIGITS} ASCII digits), got "
                    f"{_preview(rest)}",
                    number,
                    current,
                )
            edits.append(DeleteLine(line=value, block=current))
        elif keyword == "REPLACE":
            new_lines = [rest] if rest else []
            new_lines += [raw.strip() for raw in raw_lines[number:] if raw.strip()]
            number = len(raw_lines)
            edits.append(ReplaceBlock(lines=tuple(new_lines), block=current))
        elif keyword == "MODEL":
            model_edits.append(SetModel(model=rest))
        elif keyword == "DEMO":
            demo_input, demo_output = _parse_demo(rest, number)
            if spot is not None:
                demo_edits.append(SwapDemo(index=spot, input=demo_input, output=demo_output))
            else:
                demo_edits.append(AddDemo(input=demo_input, output=demo_output))
        elif keyword in {"DEL_DEMO", "DELETE_DEMO", "REMOVE_DEMO"}:
            index = spot if inline_number else parse_number(rest)
            if index is None:
                raise _parse_error(
                    f"DEL_DEMO needs a demo number (1 to {MAX_NUMBER_DIGITS} ASCII digits), got "
                    f"{_preview(rest)}",
                    number,
                    DEMOS,
                )
            demo_edits.append(RemoveDemo(index=index))
        else:
            raise _parse_error(
                f"unknown keyword {keyword!r}; use ADD, EDIT, DEL, REPLACE, DEMO, DEL_DEMO, "
                "MODEL, BLOCK or no_change",
                number,
                current,
            )
    ordered: list[Edit] = []
    for group_block, edits in groups.items():
        ordered.extend(_order_as_shown(edits, group_block))
    return ordered + _order_demos_as_shown(demo_edits) + model_edits


_DEMO_ARROW = re.compile(r"\s*(?:->|→|=>)\s*")


def _parse_demo(rest: str, number: int) -> tuple[str, str]:
    """Parse ``"<input>" -> "<output>"`` (JSON string literals) into the two turns."""
    decoder = json.JSONDecoder()
    expected = 'DEMO needs "<user input>" -> "<assistant reply>" as JSON strings'
    try:
        demo_input, end = decoder.raw_decode(rest)
        arrow = _DEMO_ARROW.match(rest, end)
        if arrow is None:
            raise ValueError("no arrow")
        demo_output, end = decoder.raw_decode(rest, arrow.end())
    except ValueError:
        raise _parse_error(f"{expected}, got {rest[:80]!r}", number, DEMOS) from None
    if not isinstance(demo_input, str) or not isinstance(demo_output, str) or rest[end:].strip():
        raise _parse_error(f"{expected}, got {rest[:80]!r}", number, DEMOS)
    return demo_input, demo_output


def _order_demos_as_shown(edits: list[Edit]) -> list[Edit]:
    """Order demo edits so each number refers to the demos as shown: swaps, removals, adds."""
    touched: set[int] = set()
    for edit in edits:
        if isinstance(edit, SwapDemo | RemoveDemo):
            if edit.index in touched:
                raise InvalidEdit(
                    f"Demo {edit.index} is targeted twice; give one directive per demo.",
                    reason="conflicting_edits",
                    block=DEMOS,
                    line=edit.index,
                )
            touched.add(edit.index)
    swaps = [e for e in edits if isinstance(e, SwapDemo)]
    removals = sorted(
        (e for e in edits if isinstance(e, RemoveDemo)), key=lambda e: e.index, reverse=True
    )
    adds = [e for e in edits if isinstance(e, AddDemo)]
    return [*swaps, *removals, *adds]


def _directive_number(
    digits: str | None, keyword: str, number: int, block: str | None
) -> int | None:
    """The line number a directive names (None when it names none)."""
    if digits is None:
        return None
    value = parse_number(digits)
    if value is None:
        raise _parse_error(
            f"{keyword} names a line number of {len(digits)} digits; expected at most "
            f"{MAX_NUMBER_DIGITS}",
            number,
            block,
        )
    return value


def _order_as_shown(edits: list[Edit], block: str | None) -> list[Edit]:
    """Order one block's edits so each line number refers to the block as shown."""
    replaces = [e for e in edits if isinstance(e, ReplaceBlock)]
    if replaces and len(edits) > 1:
        raise InvalidEdit(
            f"REPLACE rewrites block {block or DEFAULT_EDIT_BLOCK!r} whole; it cannot be "
            "combined with other directives on that block.",
            reason="conflicting_edits",
            block=block,
        )
    touched: dict[int, str] = {}
    for edit in edits:
        if isinstance(edit, EditLine | DeleteLine):
            if edit.line in touched:
                raise InvalidEdit(
                    f"Line {edit.line} of block {block or DEFAULT_EDIT_BLOCK!r} is targeted twice "
                    f"({touched[edit.line]} and {edit.kind}); give one directive per line.",
                    reason="conflicting_edits",
                    block=block,
                    line=edit.line,
                )
            touched[edit.line] = edit.kind
    line_edits = [e for e in edits if isinstance(e, EditLine)]
    appends = [e for e in edits if isinstance(e, AddLine) and e.position is None]
    shifting = [
        e
        for e in edits
        if isinstance(e, DeleteLine) or (isinstance(e, AddLine) and e.position is not None)
    ]

    def bottom_up(item: tuple[int, Edit]) -> tuple[int, int, int]:
        # At one spot the deletion goes first; additions there keep their directive order.
        index, edit = item
        if isinstance(edit, DeleteLine):
            return (-edit.line, 0, 0)
        assert isinstance(edit, AddLine) and edit.position is not None
        return (-edit.position, 1, -index)

    ordered = [edit for _, edit in sorted(enumerate(shifting), key=bottom_up)]
    return [*replaces, *line_edits, *ordered, *appends]


def to_directive(edit: Edit) -> str:
    r"""Render an edit as directive text (the inverse of :func:`parse_directives` for one edit).

    Example:
        >>> to_directive(EditLine(line=2, text="be brief", block="general"))
        'BLOCK: general\nEDIT: 2 -> be brief'
    """
    block = edit.block if isinstance(edit, AddLine | EditLine | DeleteLine | ReplaceBlock) else None
    prefix = f"BLOCK: {block}\n" if block else ""
    if isinstance(edit, AddLine):
        spot = f" {edit.position}" if edit.position is not None else ""
        return f"{prefix}ADD{spot}: {edit.text}"
    if isinstance(edit, EditLine):
        return f"{prefix}EDIT: {edit.line} -> {edit.text}"
    if isinstance(edit, DeleteLine):
        return f"{prefix}DEL: {edit.line}"
    if isinstance(edit, ReplaceBlock):
        return f"{prefix}REPLACE:\n" + "\n".join(edit.lines)
    if isinstance(edit, AddDemo | SwapDemo):
        spot = f" {edit.index}" if isinstance(edit, SwapDemo) else ""
        pair = f"{json.dumps(edit.input, ensure_ascii=False)} -> "
        return f"DEMO{spot}: {pair}{json.dumps(edit.output, ensure_ascii=False)}"
    if isinstance(edit, RemoveDemo):
        return f"DEL_DEMO: {edit.index}"
    if isinstance(edit, SetModel):
        return f"MODEL: {edit.model}"
    return "no_change"


def diff(before: PromptState, after: PromptState, *, name: str = "prompt") -> str:
    """Return a unified diff of two states' rendered prompts (model line first, demos last).

    Returns:
        The diff text; empty when the rendered prompts and models are equal.
    """
    old = [f"model: {before.model}", *before.render().split("\n")]
    new = [f"model: {after.model}", *after.render().split("\n")]
    for lines, state in ((old, before), (new, after)):
        if state.demos:
            lines.extend(["", *state.render_demos().split("\n")])
    return "\n".join(
        difflib.unified_diff(
            old,
            new,
            fromfile=f"{name}@{before.fingerprint()}",
            tofile=f"{name}@{after.fingerprint()}",
            lineterm="",
        )
    )
