r"""What is the optimizable state of a program? One prompt state per node, and node edits.

A :class:`ProgramState` maps every node of a :class:`~selfimprove_rl.program.Program` to its
:class:`~selfimprove_rl.prompt.PromptState` (blocks of system-prompt lines and a model, and
whatever else a prompt state carries), so each node inherits everything a single call can
optimize. It has a stable fingerprint (the registry deduplicates program versions by it), a
text rendering and a diff.

A :class:`NodeEdit` addresses one :data:`~selfimprove_rl.prompt.Edit` to one node;
:func:`apply_program` applies a list of them atomically (a failed edit leaves nothing
half-applied, and the error names the node). Directive text for programs is the single-call
directive language (:mod:`selfimprove_rl.prompt`) with ``NODE: name`` lines choosing the node
the following directives edit::

    NODE: router
    ADD: if input mentions refund: respond "billing"
    NODE: responder
    ADD: if input mentions billing: respond "Our billing team will reply."

Example:
    >>> from selfimprove_rl.prompt import PromptState
    >>> state = ProgramState(nodes={
    ...     "router": PromptState.from_text("Label the message.", model="sim-large"),
    ...     "responder": PromptState.from_text("Answer from the label.", model="sim-large"),
    ... })
    >>> edits = parse_program_directives("NODE: router\nADD: else: respond \"other\"")
    >>> new = apply_program(state, edits)
    >>> new.node("router").block("sop").lines
    ('else: respond "other"',)
    >>> new.fingerprint() != state.fingerprint()
    True
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfimprove_rl.checkpoint import Action
from selfimprove_rl.errors import InvalidEdit, unknown_name_message
from selfimprove_rl.program import NODE_NAME_PATTERN, Program
from selfimprove_rl.prompt import Edit, PromptState, apply, parse_directives, to_directive

_NODE_LINE = re.compile(r"^\s*NODE\s*:\s*(\S.*?)\s*$", re.IGNORECASE)


class NodeEdit(BaseModel):
    """One edit addressed to one node of a program."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["node_edit"] = "node_edit"
    node: str = Field(pattern=NODE_NAME_PATTERN)
    edit: Edit


class ProgramState(BaseModel):
    """Every node's prompt state, in program order.

    Raises (on construction):
        ValueError: no node, or a node name that is not a valid name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: dict[str, PromptState] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_valid(self) -> ProgramState:
        bad = [name for name in self.nodes if not re.fullmatch(NODE_NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"node names must match {NODE_NAME_PATTERN}; got {bad}")
        return self

    @property
    def names(self) -> list[str]:
        """Node names, in program order."""
        return list(self.nodes)

    def node(self, name: str) -> PromptState:
        """Return the prompt state of node ``name``.

        Raises:
            InvalidEdit: no such node (reason ``unknown_node``).
        """
        try:
            return self.nodes[name]
        except KeyError:
            raise InvalidEdit(
                unknown_name_message("node", name, self.nodes), reason="unknown_node"
            ) from None

    def with_node(self, name: str, state: PromptState) -> ProgramState:
        """Return a copy with node ``name``'s state replaced."""
        self.node(name)
        return ProgramState(
            nodes={key: state if key == name else value for key, value in self.nodes.items()}
        )

    def fingerprint(self) -> str:
        """Return a stable 16-hex id of every node's name and prompt-state fingerprint."""
        payload = [[name, state.fingerprint()] for name, state in self.nodes.items()]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]

    @property
    def model(self) -> str:
        """The model every node uses, or ``node=model`` pairs when they differ."""
        models = {state.model for state in self.nodes.values()}
        if len(models) == 1:
            return next(iter(models))
        return ", ".join(f"{name}={state.model}" for name, state in self.nodes.items())

    def render(self) -> str:
        """Return every node's system prompt under a ``### node NAME (model)`` heading."""
        parts = [
            f"### node {name} ({state.model})\n{state.render()}".rstrip()
            for name, state in self.nodes.items()
        ]
        return "\n\n".join(parts)

    def to_actions(self, base: Mapping[str, Action]) -> dict[str, Action]:
        """Return each node's logged action with this state's system prompt and model."""
        return {name: state.to_action(base[name]) for name, state in self.nodes.items()}

    @classmethod
    def from_actions(
        cls,
        program: Program,
        actions: Mapping[str, Action],
        *,
        model: str | None = None,
        frozen_blocks: Mapping[str, Collection[str]] | None = None,
    ) -> ProgramState:
        """Parse every node's logged action into a prompt state (demos kept), in program order.

        Args:
            program: the wiring (gives the node order).
            actions: node name -> its logged action.
            model: a model for every node instead of the logged ones.
            frozen_blocks: node name -> blocks no edit may touch.

        Returns:
            The state.
        """
        frozen = frozen_blocks or {}
        nodes: dict[str, PromptState] = {}
        for name in program.order:
            state = PromptState.from_action(actions[name], model=model)
            nodes[name] = state.with_frozen(list(frozen.get(name, ())))
        return cls(nodes=nodes)


def apply_program(
    state: ProgramState,
    edits: Sequence[NodeEdit],
    *,
    allowed_models: Collection[str] | None = None,
) -> ProgramState:
    """Apply node edits in order and return the new state (``state`` when nothing changes).

    Raises:
        InvalidEdit: an edit names an unknown node or cannot apply; nothing is applied, and
            the message starts with the node's name.
    """
    nodes = dict(state.nodes)
    for node_edit in edits:
        if node_edit.node not in nodes:
            state.node(node_edit.node)  # raises InvalidEdit naming the known nodes
        try:
            nodes[node_edit.node] = apply(
                nodes[node_edit.node], node_edit.edit, allowed_models=allowed_models
            )
        except InvalidEdit as exc:
            raise InvalidEdit(
                f"node {node_edit.node!r}: {exc}",
                reason=exc.reason,
                block=exc.block,
                line=exc.line,
            ) from exc
    if nodes == state.nodes:
        return state
    return ProgramState(nodes=nodes)


def parse_program_directives(text: str, *, node: str | None = None) -> list[NodeEdit]:
    """Parse directive text with ``NODE:`` sections into node edits.

    Args:
        text: directives (see the module docstring); each section is parsed by
            :func:`selfimprove_rl.prompt.parse_directives`, so line numbers refer to the
            node's prompt as shown.
        node: the node directives before the first ``NODE:`` line edit; ``None`` requires a
            ``NODE:`` line before any directive.

    Returns:
        The node edits, section by section.

    Raises:
        InvalidEdit: a directive before any ``NODE:`` line (with ``node=None``), a bad node
            name (``unparseable_directive``), or any error of ``parse_directives``.
    """
    sections: list[tuple[str | None, list[str]]] = [(node, [])]
    for line in text.split("\n"):
        match = _NODE_LINE.match(line)
        if match:
            name = match.group(1)
            if not re.fullmatch(NODE_NAME_PATTERN, name):
                raise InvalidEdit(
                    f"NODE needs a node name (lowercase letters, digits, _), got {name!r}.",
                    reason="unparseable_directive",
                )
            sections.append((name, []))
        else:
            sections[-1][1].append(line)
    edits: list[NodeEdit] = []
    for name, lines in sections:
        body = "\n".join(lines)
        parsed = parse_directives(body)
        if not parsed:
            continue
        if name is None:
            raise InvalidEdit(
                "Program directives must say which node they edit: start with 'NODE: <name>'.",
                reason="unparseable_directive",
            )
        edits.extend(NodeEdit(node=name, edit=edit) for edit in parsed)
    return edits


def program_directive(edits: Sequence[NodeEdit]) -> str:
    r"""Render node edits as directive text (a ``NODE:`` line before each node's run of edits).

    Example:
        >>> from selfimprove_rl.prompt import AddLine
        >>> print(program_directive([NodeEdit(node="router", edit=AddLine(text="x"))]))
        NODE: router
        ADD: x
    """
    lines: list[str] = []
    current: str | None = None
    for node_edit in edits:
        if node_edit.node != current:
            lines.append(f"NODE: {node_edit.node}")
            current = node_edit.node
        lines.append(to_directive(node_edit.edit))
    return "\n".join(lines)


def program_diff(before: ProgramState, after: ProgramState, *, name: str = "program") -> str:
    """Return a unified diff of two program states, node by node (model lines included)."""
    chunks: list[str] = []
    for node in dict.fromkeys([*before.names, *after.names]):
        old = before.nodes.get(node)
        new = after.nodes.get(node)
        old_lines = [] if old is None else [f"model: {old.model}", *old.render().split("\n")]
        new_lines = [] if new is None else [f"model: {new.model}", *new.render().split("\n")]
        chunk = "\n".join(
            difflib.unified_diff(
                old_lines,
                new_lines,
                fromfile=f"{name}/{node}@{old.fingerprint() if old else 'none'}",
                tofile=f"{name}/{node}@{new.fingerprint() if new else 'none'}",
                lineterm="",
            )
        )
        if chunk:
            chunks.append(chunk)
    return "\n".join(chunks)
