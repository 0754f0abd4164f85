"""What does a system prompt tell the simulated model to do? The SOP grammar and its parser.

The simulated model reads its system prompt (every ``system`` and ``developer`` message, in
order) as a standard operating procedure: one statement per line. A line may start with a
bullet (``-``, ``*``, ``+``, ``•``) or a number (``1.``, ``2)``, ``(3)``); keywords are
case-insensitive (``if``, ``If``, ``IF``). It understands terse pseudo-code *and* the plain
instructions people write for real models:

``if input mentions <terms>: respond "<reply>"``
    A literal condition. ``<terms>`` are words or phrases separated by ``or`` and/or commas;
    a phrase may be double-quoted (``"flat white"``). It matches when the input contains any
    term as whole words, case-insensitively (``coffee`` matches "Coffee!" but not
    "coffeehouse"). ``contains``, ``includes``, ``uses the word(s)`` mean ``mentions``.

``if input is about <description>: respond "<reply>"``
    A semantic condition: the input is compared, by sentence-embedding cosine similarity,
    with the description and with each of its facets (the parts between commas, ``or``,
    ``and`` and ``/``); the best of those similarities must reach the tier's threshold. A
    richer description ("coffee, espresso, lattes or coffee beans") reaches more inputs.
    ``asks about``, ``talks about``, ``concerns``, ``relates to``, ``is related to``,
    ``refers to``, ``is regarding``, ``wants`` and ``asks for`` mean ``is about``.

``example: "<input>" -> "<reply>"``
    An in-context example. ``→`` and ``=>`` work as arrows too. Few-shot demonstrations sent
    as user/assistant chat turns before the live message work the same way (see
    :mod:`selfimprove_rl.simulated.model`).

``else if ...`` (exactly like ``if``), and ``else: respond "<reply>"``
    ``otherwise``, ``in all other cases``, ``for anything else`` and ``if none of these
    apply`` are synonyms of ``else``.

Free-form ``if``/``when`` lines with an action (``If a customer cannot sign in, reply: ...``)
    A semantic rule whose description is the condition without its lead-in words; and
    ``For anything else ..., reply: ...`` is an ``else``. This is how a small model reads an
    instruction it was not trained on a grammar for: by its gist.

``- "<reply>"`` under a line that asks for *one of these/the following* replies
    A listed reply option (a bare quoted line counts anywhere). When nothing else answers,
    ``sim-small`` and ``sim-max-cue`` pick the listed reply closest in meaning to the input;
    ``sim-large`` does not (given only a menu, a small real model answers in its own words).

The subject of a condition may be ``input``, ``message``, ``user``, ``request``,
``customer``, ``question`` or ``query`` (with ``the`` and ``user's``/``customer's``), and
``when`` may stand for ``if``. After the condition, ``:``, ``,`` or ``then`` introduce the
action; ``respond``, ``reply``, ``answer`` and ``say`` (optionally followed by ``with``,
``exactly`` and ``this text``/``this reply``, and a colon) are synonyms. A quoted reply runs
from the first double quote after the action word to the last double quote on the line, so
it may contain quotes and apostrophes; curly quotes work too; an optional ``; terminate``
(or ``stop``, or a final period) may follow. An unquoted reply is the rest of the line,
verbatim. A line that fits none of these forms (a heading, vague guidance such as "be
friendly", a rule with an empty reply) is ignored and listed in :attr:`Sop.ignored`.

How the model answers with a parsed SOP (see :mod:`selfimprove_rl.simulated.model`): a
literal ``mentions`` rule that matches answers (the first one); then ``sim-large`` and
``sim-noisy`` weigh every ``about`` rule, example and demonstration together and answer with
the reply whose evidence above threshold adds up to the most (an instruction-tuned model reads
the whole prompt; a reply shown only once as an example is not copied), ``sim-max-cue`` with
the reply of the single strongest one, while ``sim-small`` takes the ``if``/``else if`` rules
in order, first match wins, then the nearest example; otherwise the first ``else``; otherwise
the closest listed reply option (not for ``sim-large`` and ``sim-noisy``: a small model given
only a menu answers in its own words); otherwise a generic reply derived from the input.

Example:
    >>> sop = parse_sop('''## SOP
    ... 1. If input mentions coffee or "flat white": respond "I like coffee, too."; terminate
    ... - else if input is about sports, games or exercise: respond "Well, I don't like sports."
    ... example: "I grind my own beans" -> "Beans!"
    ... Be friendly.
    ... When the customer asks about a refund, reply with exactly: We'll refund you.
    ... Otherwise, reply with exactly: "Tell me more."''')
    >>> [s.kind for s in sop.statements]
    ['mentions', 'about', 'example', 'about', 'else']
    >>> sop.statements[0].terms
    ('coffee', 'flat white')
    >>> sop.statements[1].facets
    ('sports, games or exercise', 'sports', 'games', 'exercise')
    >>> sop.statements[3].description, sop.statements[3].reply
    ('a refund', "We'll refund you.")
    >>> sop.ignored
    (1, 5)
    >>> sop.statements[0].matches("A Flat  White, please!")
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

StatementKind = Literal["mentions", "about", "example", "else", "option"]

_PREFIX = re.compile(r"^\s*(?:[-*+•]\s+|\d+[.)]\s+|\(\d+\)\s+)?")
_ACTION = (
    r"(?:respond|reply|answer|say)(?:\s+with)?(?:\s+exactly)?"
    r"(?:\s+(?:this|the\s+following)(?:\s+(?:text|reply|message|sentence))?)?\s*:?\s*"
)
_REPLY = r"(?:[\"“](?P<reply>.*)[\"”](?P<tail>.*)|(?P<bare>[^\"“\s].*))"
_TAIL = re.compile(r"^\s*(?:[;,.]?\s*(?:and\s+)?(?:terminate|stop)\b)?\s*\.?\s*$", re.IGNORECASE)
_SUBJECT = (
    r"(?:the\s+)?(?:(?:user|customer)(?:'s|’s)\s+)?"
    r"(?:input|message|user|request|customer|question|query)"
)
_LITERAL_OP = r"mentions|contains|includes|uses\s+the\s+words?|has\s+the\s+words?"
_SEMANTIC_OP = (
    r"is\s+about|is\s+asking\s+(?:about|for)|asks\s+(?:about|for)|talks\s+about|concerns|"
    r"relates\s+to|is\s+related\s+to|refers\s+to|is\s+regarding|deals\s+with|wants"
)
_IF = re.compile(
    r"^(?P<else>(?:else|otherwise)[\s,]+)?(?:if|when|whenever)\s+" + _SUBJECT + r"\s+"
    r"(?P<op>" + _LITERAL_OP + "|" + _SEMANTIC_OP + r")\s+(?P<cond>.+?)"
    r"(?:\s*[:,]\s*(?:then\s+)?|\s+then\s+)" + _ACTION + _REPLY + r"$",
    re.IGNORECASE,
)
_ELSE = re.compile(
    r"^(?:else|otherwise|in\s+all\s+other\s+cases|in\s+any\s+other\s+case|"
    r"for\s+(?:anything|everything)\s+else|if\s+none\s+of\s+(?:these|the\s+above)"
    r"(?:\s+rules)?\s+appl(?:y|ies))\s*[:,]?\s*" + _ACTION + _REPLY + r"$",
    re.IGNORECASE,
)
_LOOSE_IF = re.compile(
    r"^(?:if|when|whenever)\s+(?P<cond>.+?)(?:\s*[:,]\s*(?:then\s+)?|\s+then\s+)"
    + _ACTION
    + _REPLY
    + r"$",
    re.IGNORECASE,
)
_LOOSE_ELSE = re.compile(
    r"^(?:for|in|with)\s+(?:anything|everything|all|any)\s+(?:else|other)\b.*?[:,]\s*"
    + _ACTION
    + _REPLY
    + r"$",
    re.IGNORECASE,
)
_LEAD_IN = re.compile(
    r"^(?:(?:the\s+|a\s+|an\s+)?(?:(?:user|customer)(?:'s|’s)\s+)?(?:input|message|user|request|customer|"
    r"question|query|they|someone|it)\s+)?(?:is\s+|are\s+|has\s+|have\s+|was\s+)?"
    r"(?:(?:asking|talking|writing|complaining|worried|upset|curious|asks|talks|writes|"
    r"complains|mentions|wants|needs)\s+)?"
    r"(?:about|regarding|concerning|for|with|on)?\s*",
    re.IGNORECASE,
)
_OPTION = re.compile(r"^[\"“](?P<reply>.+)[\"”]\s*\.?$")
_OPTIONS_HEADER = re.compile(r"\bone\s+of\s+(?:these|the\s+following)\b", re.IGNORECASE)
_EXAMPLE = re.compile(
    r"^example\s*(?:\d+\s*)?:\s*[\"“](?P<input>.*?)[\"”]\s*(?:->|→|=>)\s*"
    r"[\"“](?P<reply>.*)[\"”]\s*\.?\s*$",
    re.IGNORECASE,
)
_QUOTED_OR_CHUNK = re.compile(r"\"([^\"]+)\"|“([^”]+)”|([^,\"“]+)")
_OR = re.compile(r"\bor\b", re.IGNORECASE)
_TERM_LEAD = re.compile(r"^(?:either|any\s+of|the\s+words?|words\s+like)\s+", re.IGNORECASE)
_FACET_SPLIT = re.compile(r",|/|\bor\b|\band\b", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Statement:
    """One understood SOP line.

    Attributes:
        kind: ``mentions`` or ``about`` (an ``if``/``else if`` rule), ``example``, ``else``,
            ``option`` (a listed reply).
        reply: what the model says when this statement answers.
        line: the 1-based line number in the system prompt.
        text: the source line, stripped.
        terms: the literal terms of a ``mentions`` rule, lowercased.
        description: the description of an ``about`` rule.
        facets: the description followed by its parts (``about`` rules).
        example_input: the input of an ``example`` line.
    """

    kind: StatementKind
    reply: str
    line: int
    text: str
    terms: tuple[str, ...] = ()
    description: str = ""
    facets: tuple[str, ...] = ()
    example_input: str = ""
    _pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @property
    def is_rule(self) -> bool:
        """True for ``if``/``else if`` rules (``mentions`` or ``about``)."""
        return self.kind in ("mentions", "about")

    def matches(self, text: str) -> bool:
        """Whether a ``mentions`` rule's terms occur in ``text`` as whole words.

        Raises:
            ValueError: called on a statement that is not a ``mentions`` rule.
        """
        if self._pattern is None:
            raise ValueError(f"Expected a 'mentions' rule, got a {self.kind!r} statement.")
        return self._pattern.search(text) is not None


@dataclass(frozen=True, slots=True)
class Sop:
    """A parsed system prompt: its understood statements and the lines it ignored."""

    statements: tuple[Statement, ...]
    ignored: tuple[int, ...]

    def first(self, count: int | None) -> Sop:
        """Return the SOP cut to its first ``count`` statements (all when ``None``)."""
        if count is None or count >= len(self.statements):
            return self
        return Sop(statements=self.statements[:count], ignored=self.ignored)

    @property
    def rules(self) -> tuple[Statement, ...]:
        """The ``if``/``else if`` rules, in order of appearance."""
        return tuple(s for s in self.statements if s.is_rule)

    @property
    def examples(self) -> tuple[Statement, ...]:
        """The ``example`` lines, in order of appearance."""
        return tuple(s for s in self.statements if s.kind == "example")

    @property
    def fallback(self) -> Statement | None:
        """The first ``else`` line, if any."""
        return next((s for s in self.statements if s.kind == "else"), None)

    @property
    def options(self) -> tuple[Statement, ...]:
        """The listed reply options, in order of appearance."""
        return tuple(s for s in self.statements if s.kind == "option")


def _tail_ok(tail: str) -> bool:
    return _TAIL.match(tail) is not None


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def parse_terms(condition: str) -> tuple[str, ...]:
    """Split a ``mentions`` condition into lowercased terms.

    Example:
        >>> parse_terms('coffee, espresso, or "flat white"')
        ('coffee', 'espresso', 'flat white')
    """
    terms: list[str] = []
    for quoted, curly, chunk in _QUOTED_OR_CHUNK.findall(condition):
        pieces = [quoted or curly] if (quoted or curly) else _OR.split(chunk)
        for piece in pieces:
            term = _clean(_TERM_LEAD.sub("", _clean(piece)).strip(" .;:!?'")).lower()
            if term and term not in terms:
                terms.append(term)
    return tuple(terms)


def term_pattern(terms: tuple[str, ...]) -> re.Pattern[str]:
    """Compile one case-insensitive whole-word pattern matching any of ``terms``."""
    alternatives = sorted((re.escape(t).replace(r"\ ", r"\s+") for t in terms), key=len)
    return re.compile(r"(?<!\w)(?:" + "|".join(reversed(alternatives)) + r")(?!\w)", re.I)


def facets_of(description: str) -> tuple[str, ...]:
    """Return a description followed by its parts (split at commas, or, and, slashes).

    Example:
        >>> facets_of("a refund or a billing error")
        ('a refund or a billing error', 'a refund', 'a billing error')
    """
    facets = [description]
    for part in _FACET_SPLIT.split(description):
        part = _clean(part)
        if len(part) > 1 and part not in facets:
            facets.append(part)
    return tuple(facets)


def _reply_of(found: re.Match[str]) -> str:
    """The reply of a matched rule: the quoted text (with a valid tail) or the bare rest."""
    if found["bare"] is not None:
        return found["bare"].strip()
    return found["reply"].strip() if _tail_ok(found["tail"]) else ""


def parse_line(raw: str, number: int) -> Statement | None:
    """Parse one SOP line; ``None`` when the line is not understood."""
    text = _PREFIX.sub("", raw, count=1).strip()
    if not text:
        return None
    found = _IF.match(text)
    if found and _reply_of(found):
        condition = found["cond"].strip().strip('"“”').strip()
        reply = _reply_of(found)
        if re.fullmatch(_LITERAL_OP, found["op"], re.IGNORECASE):
            terms = parse_terms(found["cond"])
            if not terms:
                return None
            return Statement(
                kind="mentions",
                reply=reply,
                line=number,
                text=text,
                terms=terms,
                _pattern=term_pattern(terms),
            )
        if not condition:
            return None
        description = _clean(condition)
        return Statement(
            kind="about",
            reply=reply,
            line=number,
            text=text,
            description=description,
            facets=facets_of(description),
        )
    found = _ELSE.match(text)
    if found and _reply_of(found):
        return Statement(kind="else", reply=_reply_of(found), line=number, text=text)
    found = _EXAMPLE.match(text)
    if found and found["input"].strip() and found["reply"].strip():
        return Statement(
            kind="example",
            reply=found["reply"].strip(),
            line=number,
            text=text,
            example_input=found["input"].strip(),
        )
    found = _OPTION.match(text)
    if found and found["reply"].strip():
        return Statement(kind="option", reply=found["reply"].strip(), line=number, text=text)
    return _loose_line(text, number)


def _loose_line(text: str, number: int) -> Statement | None:
    """Read a free-form instruction the way a small model does: its gist, semantically.

    ``If a customer cannot sign in or forgot a password, reply: ...`` becomes an ``about``
    rule whose description is the condition without its lead-in (``cannot sign in or forgot a
    password``); ``For anything else (feedback, ...), reply: ...`` becomes an ``else``.
    """
    found = _LOOSE_ELSE.match(text)
    if found and _reply_of(found):
        return Statement(kind="else", reply=_reply_of(found), line=number, text=text)
    found = _LOOSE_IF.match(text)
    if not found or not _reply_of(found):
        return None
    description = _clean(_LEAD_IN.sub("", found["cond"].strip(), count=1)).strip(" .;:")
    if len(description) < 2 or re.fullmatch(_LITERAL_OP + "|" + _SEMANTIC_OP, description, re.I):
        return None
    return Statement(
        kind="about",
        reply=_reply_of(found),
        line=number,
        text=text,
        description=description,
        facets=facets_of(description),
    )


@lru_cache(maxsize=4096)
def parse_sop(system_prompt: str) -> Sop:
    """Parse a system prompt into an :class:`Sop` (cached per exact prompt text).

    Args:
        system_prompt: the text of the system (and developer) messages.

    Returns:
        The understood statements in order of appearance, and the numbers of the non-blank
        lines that were ignored.
    """
    statements: list[Statement] = []
    ignored: list[int] = []
    listing = False  # inside a list that follows a "one of these replies" line
    for number, raw in enumerate(system_prompt.splitlines(), start=1):
        if not raw.strip():
            listing = False
            continue
        statement = parse_line(raw, number)
        bullet = _PREFIX.match(raw)
        if statement is None and listing and bullet is not None and bullet.group(0).strip():
            reply = raw[bullet.end() :].strip()
            statement = Statement(kind="option", reply=reply, line=number, text=reply)
        if statement is None:
            ignored.append(number)
            listing = _OPTIONS_HEADER.search(raw) is not None
        else:
            statements.append(statement)
            listing = listing and statement.kind == "option"
    return Sop(statements=tuple(statements), ignored=tuple(ignored))
