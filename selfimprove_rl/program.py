"""How are several LLM calls wired into one program? Nodes, message templates, their order.

A *program* is a small directed acyclic graph of LLM calls (*nodes*). Each node has a name,
the messages it sends after its system prompt, and how its logged spans are recognised. A
node's messages are built by a **template** over the trace input and the outputs of upstream
nodes. The node's system prompt and model are its *action* (kept by the checkpoint, one per
node, see :class:`~selfimprove_rl.checkpoint.Checkpoint`); they are what is optimized, while
the wiring is fixed.

The template language is deliberately tiny, literal and safe:

* a placeholder is ``{{ reference }}`` (spaces inside the braces are optional);
* ``{{input}}`` is the trace input: the text of the last user message of the sample's
  conversation;
* ``{{nodes.NAME.output}}`` is the text the upstream node ``NAME`` answered for this sample;
* every ``{{...}}`` must be one of those references: anything else is a validation error
  (there is no escape, no expression, no filter, no attribute access);
* substitution is a single left-to-right pass: a substituted value is inserted as literal
  text and never scanned again, so an output that itself contains ``{{input}}`` stays as it
  is. Data is never used as a template (no ``str.format``, no ``eval``).

A node whose ``messages`` is ``None`` sends the sample's conversation as logged; a one-node
program with no templates is therefore exactly the single-call case
(:meth:`Program.single`).

Example:
    >>> program = Program(nodes=(
    ...     ProgramNode(name="router", messages=(MessageTemplate(content="{{input}}"),)),
    ...     ProgramNode(name="responder",
    ...                 messages=(MessageTemplate(content="Label: {{ nodes.router.output }}"),)),
    ... ))
    >>> program.order, program.output_name
    (('router', 'responder'), 'responder')
    >>> render_template("Label: {{nodes.router.output}}", {"nodes.router.output": "{{input}}"})
    'Label: {{input}}'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfimprove_rl.errors import ProgramError, unknown_name_message

INPUT_REFERENCE = "input"
SINGLE_NODE_NAME = "call"
NODE_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_REFERENCE = re.compile(r"^\s*(?:(input)|nodes\.([a-z][a-z0-9_]*)\.output)\s*$")


def output_reference(node: str) -> str:
    """Return the canonical reference to ``node``'s output (``nodes.NAME.output``).

    Example:
        >>> output_reference("router")
        'nodes.router.output'
    """
    return f"nodes.{node}.output"


def template_references(template: str) -> list[str]:
    """Return the canonical references a template uses, in order of first use.

    Raises:
        ProgramError: a ``{{...}}`` that is not ``{{input}}`` or ``{{nodes.NAME.output}}``.

    Example:
        >>> template_references("{{ input }} / {{nodes.a.output}} / {{input}}")
        ['input', 'nodes.a.output']
    """
    found: list[str] = []
    for match in _PLACEHOLDER.finditer(template):
        reference = _canonical(match.group(1))
        if reference not in found:
            found.append(reference)
    return found


def _canonical(inner: str) -> str:
    parsed = _REFERENCE.match(inner)
    if parsed is None:
        raise ProgramError(
            f"Expects a template placeholder {{{{input}}}} or {{{{nodes.NAME.output}}}}, got "
            f"{{{{{inner}}}}}. Templates have no other syntax; remove the braces or name an "
            "upstream node."
        )
    return INPUT_REFERENCE if parsed.group(1) else output_reference(parsed.group(2))


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Replace every placeholder by its value, literally, in one pass (values are not re-read).

    Args:
        template: the template text.
        values: canonical reference (``input``, ``nodes.NAME.output``) -> text.

    Returns:
        The rendered text.

    Raises:
        ProgramError: a malformed placeholder, or a reference with no value.
    """

    def swap(match: re.Match[str]) -> str:
        reference = _canonical(match.group(1))
        if reference not in values:
            raise ProgramError(
                f"Template reference {{{{{reference}}}}} has no value; known: {sorted(values)}."
            )
        return values[reference]

    return _PLACEHOLDER.sub(swap, template)


class MessageTemplate(BaseModel):
    """One message a node sends after its system prompt, its content a template."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["user", "assistant"] = "user"
    content: str = Field(description="Template text: {{input}}, {{nodes.NAME.output}}.")

    @model_validator(mode="after")
    def _placeholders_valid(self) -> MessageTemplate:
        try:
            template_references(self.content)
        except ProgramError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def render(self, values: Mapping[str, str]) -> dict[str, Any]:
        """Return the OpenAI chat message with every placeholder replaced."""
        return {"role": self.role, "content": render_template(self.content, values)}


class NodeMatch(BaseModel):
    """How a logged LLM span is recognised as this node (first criterion set wins).

    With none set, the node's name is matched against the span name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    span_name: str | None = Field(default=None, description="The span's name.")
    prompt_id: str | None = Field(
        default=None, description="Phoenix prompt name or version id recorded on the span."
    )
    system_prompt: str | None = Field(
        default=None, description="The exact system prompt the span's call used."
    )


class ProgramNode(BaseModel):
    """One LLM call of a program: its name, the messages it sends, how spans are matched."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NODE_NAME_PATTERN, description="Unique node name.")
    messages: tuple[MessageTemplate, ...] | None = Field(
        default=None,
        description="Messages after the system prompt; None: the sample's conversation.",
    )
    match: NodeMatch = Field(default_factory=NodeMatch)
    description: str = Field(default="", description="What the node is for (shown to coaches).")

    @property
    def references(self) -> list[str]:
        """Every reference the node's templates use (``input``, ``nodes.X.output``)."""
        found: list[str] = []
        for message in self.messages or ():
            for reference in template_references(message.content):
                if reference not in found:
                    found.append(reference)
        return found

    @property
    def upstream(self) -> list[str]:
        """The nodes whose outputs this node reads."""
        prefix, suffix = "nodes.", ".output"
        return [r[len(prefix) : -len(suffix)] for r in self.references if r != INPUT_REFERENCE]

    def render(self, user_input: str, outputs: Mapping[str, str]) -> list[dict[str, Any]] | None:
        """Return the node's messages for one sample (``None``: send the conversation).

        Args:
            user_input: the trace input text.
            outputs: upstream node name -> its output text for this sample.
        """
        if self.messages is None:
            return None
        values = {INPUT_REFERENCE: user_input}
        values.update({output_reference(name): text for name, text in outputs.items()})
        return [message.render(values) for message in self.messages]


class Program(BaseModel):
    """Nodes wired by templates into a DAG, and the node whose output is the program's output.

    Invariants (checked on construction): node names are unique; every template reference
    names another node; the graph has no cycle; ``output`` names a node (default: the last
    node in topological order).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: tuple[ProgramNode, ...] = Field(min_length=1)
    output: str | None = Field(default=None, description="The output node (default: the last).")

    @model_validator(mode="after")
    def _wiring_valid(self) -> Program:
        names = [node.name for node in self.nodes]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"node names must be unique; duplicated: {duplicated}")
        for node in self.nodes:
            for upstream in node.upstream:
                if upstream == node.name:
                    raise ValueError(f"node {node.name!r} reads its own output")
                if upstream not in names:
                    raise ValueError(
                        f"node {node.name!r}: " + unknown_name_message("node", upstream, names)
                    )
        self._topological(names)
        if self.output is not None and self.output not in names:
            raise ValueError(unknown_name_message("output node", self.output, names))
        return self

    def _topological(self, names: list[str]) -> tuple[str, ...]:
        """Kahn's algorithm, ties broken by declaration order (so the order is stable)."""
        needs = {node.name: set(node.upstream) for node in self.nodes}
        order: list[str] = []
        while len(order) < len(names):
            ready = [name for name in names if name not in order and needs[name] <= set(order)]
            if not ready:
                stuck = sorted(set(names) - set(order))
                raise ValueError(f"the nodes {stuck} form a cycle; a program must be acyclic")
            order.append(ready[0])
        return tuple(order)

    @property
    def names(self) -> tuple[str, ...]:
        """Node names in declaration order."""
        return tuple(node.name for node in self.nodes)

    @property
    def order(self) -> tuple[str, ...]:
        """Node names in the order they run (every node after the nodes it reads)."""
        return self._topological(list(self.names))

    @property
    def output_name(self) -> str:
        """The node whose output is the program's output."""
        return self.output or self.order[-1]

    @property
    def is_single(self) -> bool:
        """Whether this is the single-call case: one node sending the conversation as logged."""
        return len(self.nodes) == 1 and self.nodes[0].messages is None

    def node(self, name: str) -> ProgramNode:
        """Return the node called ``name``.

        Raises:
            ProgramError: no such node (the message suggests the closest name).
        """
        for node in self.nodes:
            if node.name == name:
                return node
        raise ProgramError(unknown_name_message("node", name, self.names))

    @classmethod
    def single(cls, name: str = SINGLE_NODE_NAME) -> Program:
        """The one-node program of a single-call checkpoint.

        Example:
            >>> Program.single().is_single
            True
        """
        return cls(nodes=(ProgramNode(name=name),))
