"""How does the coach say it? Plain-language instruction lines, and reading them back.

The coach writes instructions a real instruction-tuned model follows, never a model-specific
grammar:

* a reply list — ``Reply with exactly one of these replies, word for word, and nothing
  else:`` followed by one ``- <reply>`` line per reply;
* one rule per reply — ``If the message is about <a, b or c>, reply with exactly: <reply>``;
* a default — ``Otherwise, reply with exactly: <reply>``.

The block the coach edits is a :class:`Plan`: the lines it did not write (kept in place, first),
then the list, the rules and the default. :func:`read_plan` recognizes the coach's own lines
exactly, so a plan survives a round trip through the prompt: ``read_plan(p.lines()) == p``.

Example:
    >>> plan = Plan(rules=(("refund or charge", "Billing will call."),), default="Thanks!")
    >>> for line in plan.with_list(True).lines(): print(line)
    Reply with exactly one of these replies, word for word, and nothing else:
    - Billing will call.
    - Thanks!
    If the message is about refund or charge, reply with exactly: Billing will call.
    Otherwise, reply with exactly: Thanks!
    >>> read_plan(plan.lines()) == plan
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

LIST_HEADER = "Reply with exactly one of these replies, word for word, and nothing else:"
_RULE = re.compile(r"^If the message is about (?P<desc>.+?), reply with exactly: (?P<reply>.+)$")
_DEFAULT = re.compile(r"^Otherwise, reply with exactly: (?P<reply>.+)$")
_ITEM = re.compile(r"^- (?P<reply>.+)$")


def join_terms(terms: Sequence[str]) -> str:
    """Join terms as plain English: ``a``, ``a or b``, ``a, b or c``.

    Example:
        >>> join_terms(["refund", "charge", "money back"])
        'refund, charge or money back'
    """
    items = [t for t in terms if t]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def rule_line(description: str, reply: str) -> str:
    """Return the rule sending inputs about ``description`` to ``reply``."""
    return f"If the message is about {description}, reply with exactly: {reply}"


def default_line(reply: str) -> str:
    """Return the line answering everything no rule covers with ``reply``."""
    return f"Otherwise, reply with exactly: {reply}"


@dataclass(frozen=True)
class Plan:
    """The coach's view of its block: foreign lines, then list, rules and default.

    Attributes:
        foreign: lines the coach did not write, kept first and in order.
        reply_list: the replies of the list (empty: no list).
        rules: ``(description, reply)`` per rule, in order.
        default: the default reply, if any.
    """

    foreign: tuple[str, ...] = ()
    reply_list: tuple[str, ...] = ()
    rules: tuple[tuple[str, str], ...] = ()
    default: str | None = None
    _kind: str = field(default="", compare=False)

    def lines(self) -> list[str]:
        """Return the block's lines."""
        lines = list(self.foreign)
        if self.reply_list:
            lines.append(LIST_HEADER)
            lines.extend(f"- {reply}" for reply in self.reply_list)
        lines.extend(rule_line(description, reply) for description, reply in self.rules)
        if self.default is not None:
            lines.append(default_line(self.default))
        return lines

    def replies(self) -> list[str]:
        """Return every reply the rules and the default give, rules first, without repeats."""
        defaults = [self.default] if self.default is not None else []
        return list(dict.fromkeys([reply for _, reply in self.rules] + defaults))

    def with_list(self, on: bool) -> Plan:
        """Return the plan with (``on``) or without a reply list of its replies."""
        return replace(self, reply_list=tuple(r for r in self.replies() if r) if on else ())

    def rule_for(self, reply: str) -> str | None:
        """Return the description of the rule for ``reply``, if there is one."""
        return next((d for d, r in self.rules if r == reply), None)

    @property
    def is_empty(self) -> bool:
        """Whether the coach has written nothing yet."""
        return not (self.reply_list or self.rules or self.default is not None)


def read_plan(lines: Sequence[str]) -> Plan:
    """Read a block back into a :class:`Plan` (lines the coach did not write are foreign).

    A list item counts only directly under the list header; a rule, default or list found
    before another foreign line keeps its place semantics (the coach rewrites the block in
    plan order when it edits).
    """
    foreign: list[str] = []
    items: list[str] = []
    rules: list[tuple[str, str]] = []
    default: str | None = None
    listing = False
    for line in lines:
        if line == LIST_HEADER:
            listing = True
            continue
        item = _ITEM.match(line) if listing else None
        if item:
            items.append(item["reply"])
            continue
        listing = False
        rule = _RULE.match(line)
        fallback = _DEFAULT.match(line)
        if rule:
            rules.append((rule["desc"], rule["reply"]))
        elif fallback and default is None:
            default = fallback["reply"]
        else:
            foreign.append(line)
    return Plan(tuple(foreign), tuple(items), tuple(rules), default)
