r"""How does the simulated model answer a Phoenix-evals classification request? A fixed rule.

Phoenix evals (``create_classifier`` / ``ClassificationEvaluator``) send the rendered template
as a user message and ask for an object ``{"explanation": str, "label": <rail>}``, either as
``response_format={"type": "json_schema", ...}`` (the reply is that JSON in the message
content) or, as a fallback and for rails with descriptions, as a forced tool call
(``tools=[...]``, ``tool_choice={"type": "function", ...}``; the reply is a tool call whose
arguments are that JSON). The rails come from the schema's ``label`` enum (or ``oneOf``
consts).

The verdict, deterministic for a given prompt:

1. **Sections.** The evaluated output, the reference and the input are looked up in the
   prompt text, first as XML-ish tags (``<output>...</output>``, ``<reference>``...), then as
   labelled lines (``Output: ...``, ``[Answer]: ...``, the ``[BEGIN DATA]`` style). A labelled
   line's value is the rest of its line; when that is empty, the following lines up to a
   blank line, a separator (``***``, ``---``, ``===``, ``[END DATA]``) or the next label. The
   first occurrence of each wins. Output labels: output, response, answer, completion,
   prediction, submission, and those words after generated/model/actual/assistant/ai/llm.
   Reference labels: reference (answer/output/text/response), expected (output/answer/
   response), ground truth, gold (answer), target, ideal (answer/response), correct answer.
   Input labels: input, question, query, prompt, user input/message/query.
2. **Rails, best first.** The best rail is the first whose words include one of
   correct, similar, match, relevant, yes, true, pass, good, factual, accurate, faithful,
   consistent, same, equivalent, right, valid, helpful, grounded, supported, acceptable,
   and none of not, no, non, un, in, ir, partial(ly), somewhat, mostly, half; with none,
   the first rail. If the best rail is the last one the rails are read in reverse; otherwise
   the best rail comes first and the others keep their order.
3. **Score.** With a reference: 1.0 when output and reference are equal after normalization
   (lowercase word tokens); otherwise the token F1 of their word tokens (SQuAD-style). The
   best rail needs a score of at least 0.8; the remaining rails split [0, 0.8) evenly, from
   the better to the worse. Without a reference but with an input: the output's relevance to
   the input, the sentence-embedding cosine, with the best rail at 0.35 or more and the rest
   splitting [0, 0.35). With no output section: the worst rail.

The explanation names the comparison made, its score and the threshold. Every tier answers
classification requests by this rule; sim-noisy does not deviate here.

Example:
    >>> verdict = judge("Output: I like tea.\nReference: I like tea!", ["incorrect", "correct"])
    >>> verdict.label, verdict.score
    ('correct', 1.0)
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from selfimprove_rl.errors import SimulatedRequestError

ClassificationMode = Literal["json_schema", "tool_call"]
Relevance = Callable[[str, str], float]

REFERENCE_BEST_AT = 0.8
RELEVANCE_BEST_AT = 0.35

_OUTPUT = [
    "output",
    "response",
    "answer",
    "completion",
    "prediction",
    "submission",
    "submitted answer",
    "candidate",
] + [
    f"{qualifier} {noun}"
    for qualifier in ("generated", "model", "actual", "assistant", "ai", "llm")
    for noun in ("output", "response", "answer")
]
_REFERENCE = [
    "reference",
    "reference answer",
    "reference output",
    "reference text",
    "reference response",
    "expected",
    "expected output",
    "expected answer",
    "expected response",
    "ground truth",
    "gold",
    "gold answer",
    "target",
    "ideal answer",
    "ideal response",
    "correct answer",
]
_INPUT = ["input", "question", "query", "prompt", "user input", "user message", "user query"]
_ROLES: dict[str, str] = {
    **{label: "input" for label in _INPUT},
    **{label: "output" for label in _OUTPUT},
    **{label: "reference" for label in _REFERENCE},
}


def _label_regex(label: str, joiner: str) -> str:
    return joiner.join(re.escape(word) for word in label.split())


_ALTERNATIVES = sorted(_ROLES, key=len, reverse=True)
_LINE_LABEL = re.compile(
    r"^\s*\[?\s*(?P<label>"
    + "|".join(_label_regex(label, r"[\s_-]+") for label in _ALTERNATIVES)
    + r")\s*\]?\s*:\s*(?P<value>.*)$",
    re.IGNORECASE,
)
_TAG = re.compile(
    r"<(?P<tag>"
    + "|".join(_label_regex(label, r"[_-]") for label in _ALTERNATIVES)
    + r")>(?P<value>.*?)</(?P=tag)>",
    re.IGNORECASE | re.DOTALL,
)
_SEPARATOR = re.compile(r"^\s*(?:[*=\-]{3,}|\[end data\])\s*$", re.IGNORECASE)
_WORD = re.compile(r"\w+")
_POSITIVE = frozenset(
    "correct similar match matches matching relevant yes true pass passed good factual "
    "accurate faithful consistent same equivalent right valid helpful grounded supported "
    "acceptable".split()
)
_NEGATORS = frozenset(
    {"not", "no", "non", "un", "in", "ir", "partial", "partially", "somewhat", "mostly", "half"}
)


@dataclass(frozen=True, slots=True)
class Sections:
    """The parts of a judge prompt the verdict uses (``None`` when not found)."""

    input: str | None
    output: str | None
    reference: str | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A classification: the rail, why, and the score behind it."""

    label: str
    explanation: str
    score: float | None


@dataclass(frozen=True, slots=True)
class ClassificationTask:
    """What a classification request asks for: its rails and how to answer."""

    mode: ClassificationMode
    rails: tuple[str, ...]
    include_explanation: bool
    function_name: str = ""


def _role_of(label: str) -> str:
    return _ROLES[" ".join(re.split(r"[\s_-]+", label.lower()))]


def find_sections(text: str) -> Sections:
    """Find the input, output and reference sections of a judge prompt.

    Example:
        >>> find_sections("<input>hi</input> <output>hello</output>")
        Sections(input='hi', output='hello', reference=None)
    """
    found: dict[str, str] = {}
    for tag in _TAG.finditer(text):
        found.setdefault(_role_of(tag["tag"]), tag["value"].strip())
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _LINE_LABEL.match(line)
        if match is None:
            continue
        role = _role_of(match["label"])
        if role in found:
            continue
        value = match["value"].strip()
        if not value:
            block: list[str] = []
            for following in lines[index + 1 :]:
                if _SEPARATOR.match(following) or _LINE_LABEL.match(following):
                    break
                if not following.strip():
                    if block:
                        break
                    continue
                block.append(following.strip())
            value = "\n".join(block)
        found[role] = value
    return Sections(found.get("input"), found.get("output"), found.get("reference"))


def normalize(text: str) -> str:
    """Lowercase word tokens joined by single spaces.

    Example:
        >>> normalize("  I like TEA!  ")
        'i like tea'
    """
    return " ".join(_WORD.findall(text.lower()))


def token_f1(candidate: str, reference: str) -> float:
    """Return the F1 of the word tokens two texts share (multiset overlap).

    Example:
        >>> round(token_f1("I like coffee", "I like coffee, too"), 3)
        0.857
    """
    first = _WORD.findall(candidate.lower())
    second = _WORD.findall(reference.lower())
    if not first or not second:
        return float(first == second)
    common = sum((Counter(first) & Counter(second)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(first), common / len(second)
    return 2 * precision * recall / (precision + recall)


def order_rails(rails: Sequence[str]) -> list[str]:
    """Return the rails from best to worst (see the module rule).

    Example:
        >>> order_rails(["incorrect", "partially_correct", "correct"])
        ['correct', 'partially_correct', 'incorrect']
        >>> order_rails(["hallucinated", "factual"])
        ['factual', 'hallucinated']
    """
    best = 0
    for index, rail in enumerate(rails):
        words = set(_WORD.findall(rail.lower().replace("_", " ")))
        if words & _POSITIVE and not words & _NEGATORS:
            best = index
            break
    if best == len(rails) - 1:
        return list(reversed(rails))
    return [rails[best], *(rail for i, rail in enumerate(rails) if i != best)]


def rail_for(score: float, ordered: Sequence[str], best_at: float) -> str:
    """Map a score to a rail: the best at ``best_at`` or more; the rest split [0, best_at).

    Example:
        >>> [rail_for(s, ["good", "ok", "bad"], 0.8) for s in (0.9, 0.5, 0.1)]
        ['good', 'ok', 'bad']
    """
    if score >= best_at or len(ordered) == 1:
        return ordered[0]
    width = best_at / (len(ordered) - 1)
    index = 1 + math.floor(max(0.0, best_at - max(score, 0.0)) / width)
    return ordered[min(index, len(ordered) - 1)]


def judge(text: str, rails: Sequence[str], relevance: Relevance | None = None) -> Verdict:
    """Classify a judge prompt into one of ``rails`` by the module's rule.

    Args:
        text: the judge prompt (every non-assistant message, joined).
        rails: the allowed labels, in the schema's order.
        relevance: cosine similarity of two texts, used only without a reference.

    Returns:
        The verdict; its label is always one of ``rails``.
    """
    ordered = order_rails(rails)
    sections = find_sections(text)
    if sections.output is None:
        return Verdict(
            ordered[-1],
            f"Found no output section to judge, so the worst rail {ordered[-1]!r}.",
            None,
        )
    if sections.reference is not None:
        if normalize(sections.output) == normalize(sections.reference):
            return Verdict(
                ordered[0],
                f"The output matches the reference exactly (normalized): {ordered[0]!r}.",
                1.0,
            )
        score = round(token_f1(sections.output, sections.reference), 4)
        label = rail_for(score, ordered, REFERENCE_BEST_AT)
        return Verdict(
            label,
            f"The output differs from the reference: token F1 {score:.2f} "
            f"(best rail at >= {REFERENCE_BEST_AT}), so {label!r}.",
            score,
        )
    if sections.input is not None and relevance is not None:
        score = round(relevance(sections.input, sections.output), 4)
        label = rail_for(score, ordered, RELEVANCE_BEST_AT)
        return Verdict(
            label,
            f"No reference found; the output's relevance to the input is cosine {score:.2f} "
            f"(best rail at >= {RELEVANCE_BEST_AT}), so {label!r}.",
            score,
        )
    return Verdict(
        ordered[-1],
        f"Found an output but neither a reference nor an input, so the worst rail {ordered[-1]!r}.",
        None,
    )


def _rails_of(schema: Any, where: str) -> tuple[tuple[str, ...], bool]:
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    label = properties.get("label") if isinstance(properties, Mapping) else None
    if not isinstance(label, Mapping):
        raise SimulatedRequestError(
            f"Expected {where} to be a classification schema (an object with a 'label' "
            f"property whose enum or oneOf lists the rails), got {json.dumps(schema)[:200]}. "
            "The simulated model fills classification schemas only.",
            status=400,
            code="unsupported_schema",
            param=where,
        )
    rails: list[str] = [str(v) for v in label.get("enum") or ()]
    for option in label.get("oneOf") or ():
        if isinstance(option, Mapping) and "const" in option:
            rails.append(str(option["const"]))
    if not rails:
        raise SimulatedRequestError(
            f"Expected the 'label' property of {where} to list its rails (enum or oneOf), "
            "got none.",
            status=400,
            code="unsupported_schema",
            param=where,
        )
    return tuple(rails), "explanation" in (properties or {})


def classification_task(body: Mapping[str, Any]) -> ClassificationTask | None:
    """Return the classification a request asks for, or ``None`` for a plain chat request.

    Raises:
        SimulatedRequestError: a structured-output or forced tool request whose schema is
            not a classification (HTTP 400).
    """
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        rails, explain = _rails_of(spec.get("schema"), "response_format")
        return ClassificationTask("json_schema", rails, explain)
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_object":
        raise SimulatedRequestError(
            "Expected response_format json_schema (a classification) or text, got "
            "json_object. The simulated model fills classification schemas only.",
            status=400,
            code="unsupported_response_format",
            param="response_format",
        )
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools or choice in (None, "none", "auto"):
        return None
    functions = [t.get("function") or {} for t in tools if isinstance(t, Mapping)]
    wanted = None
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
    function = next((f for f in functions if wanted in (None, f.get("name"))), None)
    if function is None:
        raise SimulatedRequestError(
            f"tool_choice names the function {wanted!r}, which is not among the tools.",
            status=400,
            code="invalid_tool_choice",
            param="tool_choice",
        )
    rails, explain = _rails_of(function.get("parameters"), "tools")
    return ClassificationTask("tool_call", rails, explain, str(function.get("name", "")))


def answer_message(
    task: ClassificationTask, verdict: Verdict, call_id: str
) -> tuple[dict[str, Any], str]:
    """Build the assistant message and finish reason that carry a verdict."""
    payload: dict[str, Any] = {}
    if task.include_explanation:
        payload["explanation"] = verdict.explanation
    payload["label"] = verdict.label
    arguments = json.dumps(payload, ensure_ascii=False)
    if task.mode == "json_schema":
        return {"role": "assistant", "content": arguments, "refusal": None}, "stop"
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": task.function_name, "arguments": arguments},
    }
    return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}, (
        "tool_calls"
    )
