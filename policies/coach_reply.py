"""What must a coach model answer? The reply schema, its parser and the verdict of each reply.

A coach answers one JSON object (:data:`REPLY_SCHEMA`, validated by :class:`CoachReply`)::

    {"target_block": "sop", "directives": ["ADD: ...", "EDIT: 2 -> ..."],
     "demos": [{"input": "...", "output": "..."}], "rationale": "..."}

``directives`` may also be one string; ``["no_change"]`` or ``[]`` means no change; each demo
becomes a ``DEMO: "<input>" -> "<output>"`` directive. :func:`parse_reply` finds the JSON
whether the server constrained it (structured output) or not: bare, fenced as a ```json
block, or inside prose. An unusable reply raises :class:`InvalidCoachReply` whose ``verdict``
names why (see :data:`ReplyVerdict`), so a coach can count its replies by verdict.

Model output is data: it is parsed as JSON, never evaluated, executed or used as a template.

Example:
    >>> parse_reply('Here: {"target_block": "sop", "directives": "ADD: Be brief."}').lines()
    ['ADD: Be brief.']
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)

ReplyVerdict = Literal[
    "valid",
    "no_change",
    "empty",
    "not_json",
    "off_schema",
    "unknown_block",
    "too_many_directives",
    "placeholder",
    "bad_directives",
]


REPLY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "target_block": {"type": "string"},
        "directives": {"type": "array", "items": {"type": "string"}},
        "demos": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"input": {"type": "string"}, "output": {"type": "string"}},
                "required": ["input", "output"],
                "additionalProperties": False,
            },
        },
        "rationale": {"type": "string"},
    },
    "required": ["target_block", "directives", "demos", "rationale"],
    "additionalProperties": False,
}


class DemoReply(BaseModel):
    """One demonstration a coach adds: a user message and the exact reply to it."""

    model_config = ConfigDict(extra="ignore")

    input: str = Field(description="The user's message.")
    output: str = Field(description="The assistant's reply, word for word.")


class CoachReply(BaseModel):
    """The JSON a coach model must answer."""

    model_config = ConfigDict(extra="ignore")

    target_block: str | None = Field(default=None, description="The block the directives edit.")
    directives: list[str] | str = Field(
        default_factory=list, description="Directive lines, or one string of them."
    )
    demos: list[DemoReply] = Field(
        default_factory=list, description="Demonstrations to add (user/assistant turns)."
    )
    rationale: str = Field(default="", description="One sentence on why.")

    @model_validator(mode="before")
    @classmethod
    def _says_something(cls, data: Any) -> Any:
        if isinstance(data, dict) and "directives" not in data and "demos" not in data:
            raise ValueError("Field required: directives (or demos)")
        return data

    def lines(self) -> list[str]:
        """Return the directive lines (split at newlines, blanks dropped), then one DEMO each."""
        items = [self.directives] if isinstance(self.directives, str) else self.directives
        lines = [line for item in items for line in item.split("\n") if line.strip()]
        no_change = [line for line in lines if is_no_change(line)]
        if self.demos and no_change:  # "no_change" beside new demos is not no change
            lines = [line for line in lines if not is_no_change(line)]
        return lines + [
            f"DEMO: {json.dumps(d.input, ensure_ascii=False)} -> "
            f"{json.dumps(d.output, ensure_ascii=False)}"
            for d in self.demos
        ]


def is_no_change(line: str) -> bool:
    """Whether a directive line says that nothing should change."""
    return line.strip().strip('"`.').lower().replace(" ", "_") in ("no_change", "no_changes")


class InvalidCoachReply(ValueError):
    """One coach reply cannot be used; the message is fed back to the model.

    Attributes:
        verdict: why, as a counter key (see ``ReplyVerdict``).
    """

    def __init__(self, message: str, verdict: ReplyVerdict = "bad_directives") -> None:
        super().__init__(message)
        self.verdict: ReplyVerdict = verdict


def extract_json(content: str | None) -> Any:
    r"""Return the JSON value in a reply: bare, fenced as a ```json block, or inside prose.

    Raises:
        InvalidCoachReply: the reply is empty or holds no valid JSON.

    Example:
        >>> extract_json('Sure!\n```json\n{"directives": []}\n```')
        {'directives': []}
    """
    if content is None or not content.strip():
        raise InvalidCoachReply("The reply was empty.", "empty")
    text = content.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        embedded = _first_embedded_object(text)
        if embedded is not None:
            return embedded
        raise InvalidCoachReply(
            f"The reply is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).",
            "not_json",
        ) from exc


def _first_embedded_object(text: str) -> dict[str, Any] | None:
    """Return the first JSON object inside prose (one with ``directives`` preferred)."""
    decoder = json.JSONDecoder()
    first: dict[str, Any] | None = None
    for start in (i for i, char in enumerate(text) if char == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            if "directives" in value:
                return value
            first = first if first is not None else value
    return first


def parse_reply(content: str | None) -> CoachReply:
    """Parse and validate a coach reply.

    Raises:
        InvalidCoachReply: empty, malformed JSON, or off-schema.
    """
    value = extract_json(content)
    if not isinstance(value, dict):
        raise InvalidCoachReply(
            f"Expected a JSON object, got a JSON {type(value).__name__}.", "off_schema"
        )
    try:
        return CoachReply.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'reply'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise InvalidCoachReply(
            f"The JSON object does not match the schema ({problems}); expected keys "
            "target_block (string), directives (list of strings), demos (list of "
            '{"input", "output"} objects), rationale (string).',
            "off_schema",
        ) from exc
