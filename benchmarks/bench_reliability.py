"""Reliability benchmark: does every input become a value or a typed error, never a traceback?

Sections (run all, or pick with ``--sections a,b``; ``--quick`` shrinks every section):

``directives``
    Fuzzed coach directive texts (valid grammar mixed with Unicode digits, 5,000-digit
    numbers, lone surrogates, control characters, markdown headings, junk lines) are parsed
    with ``parse_directives`` and applied to a prompt state. An accepted result must
    fingerprint, render to valid UTF-8 and survive ``render -> from_text`` unchanged.
``jsonl``
    Fuzzed mimic JSONL lines (lone surrogates, deep nesting, huge numbers, NaN/Infinity,
    duplicate keys, junk types, invalid UTF-8...) are loaded with ``load_mimic_jsonl``. An
    accepted checkpoint must save and load back equal (nothing silently changed).
``frames``
    Fuzzed telemetry frame sets (duplicate span rows, junk attributes, NaN temperatures, bad
    start times, string scores, malformed recorded eval constants...) go through
    ``conform`` and ``build_checkpoint``; a quarter also through a JSONL export and reload.
    An accepted checkpoint must save and load back equal.

``faults``
    The same experiment (rule-induction coach, coffee/sports, ``sim-keyword``) runs on a clean
    in-process backend and on one answering 20% of requests with a fault (429 with
    Retry-After, 500, a timeout, a malformed 200). Violations: a fault the run did not count
    (injected by kind vs failed requests counted by reason in ``summary.json``), a promoted
    prompt different from the clean run's, a run that does not complete.
``kill``
    A reference run, then the same run killed with SIGKILL at K random moments (a real
    subprocess each time, resumed with ``--resume``) and finally resumed to the end.
    Violations: a step or version lost or duplicated, steps, versions, final prompt or calls
    different from the reference.
``secrets``
    A fake API key in the environment; runs against ``serve-sim`` over HTTP (one that
    finishes, one whose backend is down), stdout and stderr captured. Violations: any byte
    sequence of the key in the run directories (every file, the response cache included) or
    in the captured output.

Each section prints: inputs tried, accepted, rejected with a typed error (by reason),
skipped rows (by reason), invariant violations and uncaught exceptions (both goal 0), and
its own figures. The last line is one JSON object with every section's figures. Exit status
1 when any section has an uncaught exception or an invariant violation.

    .venv/bin/python benchmarks/bench_reliability.py [--quick] [--sections directives,jsonl]
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import random
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- the tally every section fills -------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes of one section: each input is accepted, rejected (typed) or uncaught."""

    section: str
    tried: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    uncaught: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def violate(self, what: str, example: str) -> None:
        self.violations[what] += 1
        self.examples.setdefault(f"violation {what}", example[:300])

    def crash(self, exc: BaseException, example: str) -> None:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
        key = f"{type(exc).__name__} at {where}"
        self.uncaught[key] += 1
        self.examples.setdefault(key, f"{_short(str(exc), 160)} <- input {example[:200]}")

    def figures(self) -> dict[str, Any]:
        return {
            "tried": self.tried,
            "accepted": self.accepted,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected.most_common()),
            "skipped_rows_by_reason": dict(self.skipped.most_common()),
            "invariant_violations": sum(self.violations.values()),
            "uncaught_exceptions": sum(self.uncaught.values()),
            "uncaught_by_kind": dict(self.uncaught.most_common()),
            "seconds": round(self.seconds, 2),
            **self.extra,
        }

    def failed(self) -> bool:
        """Whether a goal-0 figure (uncaught exceptions, invariant violations) is not 0."""
        return bool(self.uncaught or self.violations)

    def print(self) -> None:
        figures = self.figures()
        print(f"== {self.section}: {self.tried} inputs in {figures['seconds']} s")
        print(f"   accepted:             {self.accepted}")
        print(f"   rejected (typed):     {figures['rejected']}")
        for reason, count in self.rejected.most_common(12):
            print(f"      {count:6d}  {reason}")
        if self.skipped:
            print(f"   skipped rows:         {sum(self.skipped.values())}")
            for reason, count in self.skipped.most_common(16):
                print(f"      {count:6d}  {reason}")
        print(f"   invariant violations: {figures['invariant_violations']}  (goal 0)")
        for what, count in self.violations.most_common():
            print(f"      {count:6d}  {what}")
        print(f"   uncaught exceptions:  {figures['uncaught_exceptions']}  (goal 0)")
        for kind, count in self.uncaught.most_common(12):
            print(f"      {count:6d}  {kind}")
        for key, example in list(self.examples.items())[:8]:
            print(f"      e.g. {key}: {example}")
        for key, value in self.extra.items():
            print(f"   {key}: {json.dumps(value)}")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason_of_message(message: str) -> str:
    """A short, stable category for an error message (paths and quoted values removed)."""
    text = re.sub(r"^\S+:\d+: ", "", message.split("\n")[0])
    text = re.split(r" got |; |\(| \{", text)[0]
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", text)
    return _short(text.strip(" ,.:"), 60)


# -- directives --------------------------------------------------------------------------------

BASE_PROMPT = (
    "You are Bea, the cafe's assistant.\nKeep replies short.\n\n## SOP\n"
    'if input mentions coffee: respond "I like coffee, too."\n'
    'else: respond "Well, I don\'t like sports."\n'
    "be polite"
)
NUMBERS = [
    "1",
    "2",
    "3",
    "4",
    "0",
    "-1",
    "99999",
    "9" * 5000,
    "²",
    "①",
    "٣",
    "３",
    "𝟑",
    "1²",
    "",
    " ",
    "1.5",
    "1e3",
    "0x2",
    "1_0",
]
TEXTS = [
    'if input mentions tea: respond "Tea!"',
    "be brief",
    "caf\ud800",
    "\udfff tail",
    "a\x00b",
    "\x1b[31mred\x1b[0m",
    "line\u2028break",
    "para\u2029graph",
    "tab\there",
    "## Rules",
    "# x",
    "###### deep heading",
    "####### seven hashes",
    "#hashtag",
    "  ## indented heading",
    "",
    "   ",
    "emoji 😀 and ° and ß",
    "\u202eRTL override",
    "zero\u200bwidth",
    "x" * 10000,
    "a -> b",
    "2 -> two",
    "\ufeffbom",
    "\x85nel",
    "\x7fdel",
    "\x9fc1",
]
KEYWORDS = [
    "ADD",
    "EDIT",
    "DEL",
    "DELETE",
    "REPLACE",
    "MODEL",
    "BLOCK",
    "DEMO",
    "DEL_DEMO",
    "add",
    "Edit",
    "FOO",
]
DEMO_STRINGS = ['"I love tea"', '"Tea!"', '"caf\\ud800"', '"a\\u0000b"', '"two\\nlines"', '""', "x"]
PREFIXES = ["", "", "", "- ", "* ", "• ", "1. ", "2) "]
ARROWS = ["->", "→", "=>", ":", ""]
JUNK_LINES = [
    "no_change",
    "NO CHANGES.",
    "```",
    "Here are my edits:",
    ":",
    "ADD",
    "EDIT:",
    "\ud800",
    "\x00",
    "# heading line",
]
MODELS = ["sim-large", "sim-small", "", " ", "gpt\ud800", "m\x00", "sim-large\n"]
BLOCKS = ["sop", "general", "SOP", "Standard Operating Procedure", "nope", "", "ß", "\ud800"]


def _directive_line(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.1:
        return rng.choice(JUNK_LINES)
    if roll < 0.15:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(1, 12)))
    keyword = rng.choice(KEYWORDS)
    prefix = rng.choice(PREFIXES)
    # Half the time a plain value, so accepted edits (and their round trip) get exercised too.
    number = rng.choice(NUMBERS) if rng.random() < 0.5 else rng.choice("1234")
    text = rng.choice(TEXTS) if rng.random() < 0.5 else rng.choice(TEXTS[:2])
    upper = keyword.upper()
    if upper == "EDIT":
        if rng.random() < 0.5:
            return f"{prefix}{keyword}: {number} {rng.choice(ARROWS)} {text}"
        return f"{prefix}{keyword} {number}: {text}"
    if upper in {"DEL", "DELETE"}:
        return f"{prefix}{keyword}: {number}" if rng.random() < 0.7 else f"{keyword} {number}:"
    if upper == "ADD":
        spot = f" {number}" if rng.random() < 0.3 else ""
        return f"{prefix}{keyword}{spot}: {text}"
    if upper == "MODEL":
        return f"{prefix}{keyword}: {rng.choice(MODELS)}"
    if upper == "BLOCK":
        return f"BLOCK: {rng.choice(BLOCKS)}"
    if upper == "DEMO":
        spot = f" {number}" if rng.random() < 0.4 else ""
        arrow = rng.choice(["->", "→", ""])
        return f"DEMO{spot}: {rng.choice(DEMO_STRINGS)} {arrow} {rng.choice(DEMO_STRINGS)}"
    if upper == "DEL_DEMO":
        return f"DEL_DEMO: {number}"
    if upper == "REPLACE":
        lines = [rng.choice(TEXTS) for _ in range(rng.randrange(0, 3))]
        return "REPLACE:\n" + "\n".join(lines)
    return f"{prefix}{keyword}: {text}"


def fuzz_directive(rng: random.Random) -> str:
    """One coach reply: 1-3 directive lines, sometimes with junk between them."""
    return "\n".join(_directive_line(rng) for _ in range(rng.randrange(1, 4)))


def check_state(state: Any) -> str | None:
    """Return what is wrong with an accepted prompt state, or None."""
    from selfimprove_rl.prompt import PromptState

    state.fingerprint()
    text = state.render()
    text.encode("utf-8")
    again = PromptState.from_text(text, model=state.model)
    if again.render() != text:
        return "render -> from_text changes the rendered prompt"
    kept = [(b.title, b.lines) for b in state.blocks if b.lines]
    back = [(b.title, b.lines) for b in again.blocks if b.lines]
    if kept != back:
        return "render -> from_text changes the blocks"
    return None


def section_directives(args: argparse.Namespace) -> Tally:
    """Fuzzed directives through parse_directives, apply, fingerprint and a re-parse."""
    from selfimprove_rl.errors import SelfImproveError
    from selfimprove_rl.prompt import PromptState, apply, parse_directives

    tally = Tally("directives")
    rng = random.Random(args.seed)
    base = PromptState.from_text(BASE_PROMPT, model="sim-large")
    frozen = base.with_frozen(["general"])
    count = 300 if args.quick else 2000
    for index in range(count):
        text = fuzz_directive(rng)
        state = frozen if index % 5 == 0 else base
        allowed = ["sim-large", "sim-small"] if index % 3 == 0 else None
        tally.tried += 1
        try:
            edits = parse_directives(text)
            new = apply(state, edits, allowed_models=allowed)
            problem = check_state(new)
        except SelfImproveError as exc:
            tally.reject(f"{type(exc).__name__}:{getattr(exc, 'reason', '?')}")
            continue
        except Exception as exc:
            tally.crash(exc, repr(text))
            continue
        if problem:
            tally.violate(problem, repr(text))
        else:
            tally.accepted += 1
    return tally


# -- mimic JSONL -------------------------------------------------------------------------------

GOOD_LINE = json.dumps({"input": "I love espresso", "output": "I like coffee, too."})
JSON_JUNK: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    "",
    " ",
    "text",
    [],
    {},
    [1, "a"],
    {"a": {"b": [1]}},
    10**30,
    "x" * 5000,
]
RAW_JUNK = [
    "NaN",
    "Infinity",
    "-Infinity",
    "9" * 5000,
    "-" + "9" * 5000,
    "1e999",
    '"\\ud800"',
    '"caf\\udfff"',
    '"\\u0000"',
    '"a\\u2028b"',
    "[" * 100_000,
    "[" * 900 + "]" * 900,
    "{" * 3000,
    '"' + "\x01" + '"',
]


def fuzz_jsonl_line(rng: random.Random) -> str:
    """One mimic JSONL line: valid, structurally mutated, or with a raw junk token."""
    roll = rng.random()
    record: dict[str, Any] = {"input": "I love espresso", "output": "I like coffee, too."}
    if rng.random() < 0.3:
        record["id"] = rng.choice(["a1", 7, "", None, True, 1.5, "x" * 100, [1]])
    if rng.random() < 0.3:
        record["topic"] = rng.choice(JSON_JUNK)
    if roll < 0.15:
        return json.dumps(record)
    if roll < 0.35:
        record[rng.choice(["input", "output", "id", "extra"])] = rng.choice(JSON_JUNK)
        if rng.random() < 0.3:
            del record[rng.choice(list(record))]
        return json.dumps(record)
    if roll < 0.7:
        key = rng.choice(["input", "output", "id", "extra", "topic"])
        token = rng.choice(RAW_JUNK)
        body = json.dumps({k: v for k, v in record.items() if k != key})[1:-1]
        joiner = ", " if body else ""
        return "{" + body + joiner + json.dumps(key) + ": " + token + "}"
    if roll < 0.8:
        body = json.dumps(record)[1:-1]
        return "{" + body + ', "input": "again"}'  # duplicate key
    if roll < 0.9:
        return rng.choice(
            [
                "[1, 2]",
                '"just a string"',
                "42",
                "null",
                "{",
                "}",
                "\ufeff" + GOOD_LINE,
                GOOD_LINE + " trailing",
                GOOD_LINE[:-5],
                "\x00",
                "   \t",
            ]
        )
    line = json.dumps(record)
    cut = rng.randrange(0, len(line))
    return line[:cut] + rng.choice(["\\", '"', "\\u12", "\x7f", "\x1f", "\ud800"]) + line[cut:]


def section_jsonl(args: argparse.Namespace) -> Tally:
    """Fuzzed mimic lines through load_mimic_jsonl, then a checkpoint save and load."""
    from selfimprove_rl.checkpoint import Checkpoint
    from selfimprove_rl.errors import SelfImproveError
    from selfimprove_rl.mimic import load_mimic_jsonl

    tally = Tally("jsonl")
    rng = random.Random(args.seed + 1)
    count = 300 if args.quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for index in range(count):
            line = fuzz_jsonl_line(rng)
            path = folder / f"data{index % 8}.jsonl"
            tally.tried += 1
            try:
                if index % 50 == 0:
                    path.write_bytes(GOOD_LINE.encode() + b"\n" + b'{"input": "\xff\xfe"}\n')
                else:
                    content = GOOD_LINE + "\n" + line + "\n"
                    path.write_bytes(content.encode("utf-8", "surrogatepass"))
            except Exception as exc:
                tally.crash(exc, "writing the file")
                continue
            try:
                checkpoint = load_mimic_jsonl(path, eval_kind="exact_match")
                saved = folder / "checkpoint.json"
                checkpoint.save(saved)
                again = Checkpoint.load(saved)
            except SelfImproveError as exc:
                tally.reject(f"{type(exc).__name__}: {_reason_of_message(str(exc))}")
                continue
            except Exception as exc:
                tally.crash(exc, repr(line[:200]))
                continue
            if again.samples != checkpoint.samples:
                tally.violate("checkpoint save/load changes the samples", repr(line[:200]))
            else:
                tally.accepted += 1
    return tally


# -- telemetry frames --------------------------------------------------------------------------

TEMPLATE = "Output: {output}\nReference: {reference}\nDoes the output match?"
CONSTANTS = {
    "name": "match",
    "kind": "classifier",
    "template": TEMPLATE,
    "template_format": "string",
    "template_variables": ["output", "reference"],
    "labels": ["correct", "incorrect"],
    "choices": {"correct": 1.0, "incorrect": 0.0},
    "label_descriptions": {},
    "eval_model": "judge-1",
    "eval_provider": "openai",
    "direction": "maximize",
    "include_explanation": True,
    "eval_parameters": {"temperature": 0.0},
}
CID = "0123456789abcdef"
VALUE_JUNK: list[Any] = [
    None,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "junk",
    "caf\ud800",
    0,
    -5,
    10**20,
    2.5,
    True,
    [],
    [1, "a"],
    {},
    {"k": math.nan},
    "{not json",
    "[]",
    "null",
    "1970-13-45T99:99:99",
    b"bytes",
]


def _span(rng: random.Random, index: int) -> dict[str, Any]:
    sid = f"{rng.getrandbits(64):016x}"
    return {
        "span_id": sid,
        "trace_id": f"{rng.getrandbits(128):032x}",
        "parent_id": None,
        "name": "ChatCompletion",
        "span_kind": "LLM",
        "start_time": f"2026-01-01T00:00:{index:02d}+00:00",
        "end_time": f"2026-01-01T00:00:{index:02d}.5+00:00",
        "status_code": "OK",
        "status_message": "",
        "attributes": {
            "openinference.span.kind": "LLM",
            "llm.model_name": "sim-large",
            "llm.input_messages": [
                {"message.role": "system", "message.content": "be brief"},
                {"message.role": "user", "message.content": f"question {index}"},
            ],
            "llm.output_messages": [
                {"message.role": "assistant", "message.content": f"answer {index}"}
            ],
            "llm.invocation_parameters": json.dumps({"temperature": 0.0, "seed": 1}),
        },
    }


def _annotation(span: dict[str, Any]) -> dict[str, Any]:
    output = span["attributes"]["llm.output_messages"][0]["message.content"]
    return {
        "span_id": span["span_id"],
        "name": "match",
        "label": "correct",
        "score": 1.0,
        "explanation": "fine",
        "annotator_kind": "LLM",
        "identifier": "",
        "metadata": {
            "selfimprove.constants_id": CID,
            "selfimprove.variables": {"output": output, "reference": "gold"},
        },
    }


SPAN_FIELDS = ["span_id", "trace_id", "start_time", "end_time", "status_code", "attributes"]
ATTRIBUTE_FIELDS = [
    "llm.input_messages",
    "llm.output_messages",
    "llm.invocation_parameters",
    "llm.model_name",
    "metadata",
    "output.value",
]
MESSAGE_JUNK: list[Any] = [
    [{"message.role": "user"}],
    [{"message.role": 5, "message.content": "x"}],
    [{"message.role": "user", "message.content": 5}],
    [{"message.role": "user", "message.content": "caf\ud800"}],
    [{"message.role": "system", "message.content": "s"}],
    [{"message.role": "user", "message.contents": [{"message_content.text": 5}]}],
    [{"message.role": "assistant", "message.tool_calls": "x"}],
    [{"message.role": "assistant", "message.tool_calls": [{"tool_call.id": 1}]}],
    [None],
    [[1, 2]],
    '[{"message.role": "user", "message.content": "json text"}]',
]
PARAMETER_JUNK: list[Any] = [
    '{"temperature": NaN}',
    '{"temperature": Infinity}',
    '{"temperature": "hot"}',
    '{"max_tokens": 1e300}',
    '{"seed": "x", "top_p": [1]}',
    '{"stop": NaN}',
    "[1, 2]",
    {"temperature": math.nan},
    {"max_tokens": 10**40},
    {"logit_bias": {"1": math.inf}},
]
ANNOTATION_FIELDS = ["span_id", "name", "label", "score", "explanation", "metadata"]
CONSTANT_FIELDS = list(CONSTANTS)
CONSTANT_JUNK: list[Any] = [
    *VALUE_JUNK,
    {"a": "x"},
    {"a": math.nan},
    {1: 1},
    ["correct"],
    "messages",
    '[{"role": "user"}]',
]


def _mutate(
    rng: random.Random,
    spans: list[dict[str, Any]],
    notes: list[dict[str, Any]],
    evals: list[dict[str, Any]],
) -> str:
    """Apply one random mutation in place; return what it did."""
    kind = rng.randrange(12)
    span = rng.choice(spans)
    attributes = span["attributes"] if isinstance(span["attributes"], dict) else {}
    if kind == 0:
        key = rng.choice(SPAN_FIELDS)
        span[key] = rng.choice(VALUE_JUNK)
        return f"span.{key}"
    if kind == 1:
        key = rng.choice(ATTRIBUTE_FIELDS)
        attributes[key] = rng.choice(VALUE_JUNK)
        return f"attributes.{key}"
    if kind == 2:
        key = rng.choice(["llm.input_messages", "llm.output_messages"])
        attributes[key] = rng.choice(MESSAGE_JUNK)
        return f"messages {key}"
    if kind == 3:
        attributes["llm.invocation_parameters"] = rng.choice(PARAMETER_JUNK)
        return "parameters"
    if kind == 4:
        copy = json.loads(json.dumps(span, default=str))
        if rng.random() < 0.5:
            copy["attributes"] = span["attributes"]
        spans.append(copy)
        return "duplicate span row"
    if kind == 5 and notes:
        note = rng.choice(notes)
        key = rng.choice(ANNOTATION_FIELDS)
        note[key] = rng.choice([*VALUE_JUNK, "0.9", "high", "1"])
        return f"annotation.{key}"
    if kind == 6 and notes:
        note = rng.choice(notes)
        metadata = note["metadata"] if isinstance(note["metadata"], dict) else {}
        key = rng.choice(["selfimprove.constants_id", "selfimprove.variables"])
        metadata[key] = rng.choice([*VALUE_JUNK, {"output": 5}, {"output": None}])
        return f"annotation.metadata.{key}"
    if kind == 7 and notes:
        notes.append(dict(rng.choice(notes), label=rng.choice(["incorrect", None, 3])))
        return "duplicate annotation"
    if kind == 8:
        record = rng.choice(evals)
        constants = record["constants"]
        if isinstance(constants, dict):
            key = rng.choice(CONSTANT_FIELDS)
            constants[key] = rng.choice(CONSTANT_JUNK)
            return f"constants.{key}"
        record["constants"] = rng.choice(CONSTANT_JUNK)
        return "constants"
    if kind == 9:
        record = rng.choice(evals)
        key = rng.choice(["constants_id", "name", "constants"])
        record[key] = rng.choice(VALUE_JUNK)
        return f"evals.{key}"
    if kind == 10:
        evals.append(
            {"constants_id": CID, "name": "match", "constants": dict(CONSTANTS, template="other")}
        )
        return "duplicate constants"
    span["start_time"] = rng.choice(
        ["not a time", "2026-02-30T00:00:00Z", "", None, 12345, "2026-01-01", "+999999-01-01"]
    )
    return "start_time"


def fuzz_frames(rng: random.Random) -> tuple[list[Any], list[Any], list[Any], list[str]]:
    """A frame set of 3-6 spans with annotations and constants, then 1-3 mutations."""
    spans = [_span(rng, i) for i in range(rng.randrange(3, 7))]
    notes = [_annotation(s) for s in spans]
    evals: list[dict[str, Any]] = [
        {"constants_id": CID, "name": "match", "constants": json.loads(json.dumps(CONSTANTS))}
    ]
    mutations = [_mutate(rng, spans, notes, evals) for _ in range(rng.randrange(1, 4))]
    return spans, notes, evals, mutations


def section_frames(args: argparse.Namespace) -> Tally:
    """Fuzzed frame sets through conform and build_checkpoint (some via a JSONL export)."""
    import warnings

    import pandas as pd

    from selfimprove_rl.checkpoint import Checkpoint
    from selfimprove_rl.errors import SelfImproveError
    from selfimprove_rl.telemetry.builder import build_checkpoint
    from selfimprove_rl.telemetry.frames import FetchInfo, TelemetryFrames, conform

    tally = Tally("frames")
    rng = random.Random(args.seed + 2)
    # So the same script measures a checkout from before conform() could count skips.
    counts_fetch_skips = "skipped" in inspect.signature(conform).parameters
    count = 250 if args.quick else 1500
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for index in range(count):
            spans, notes, evals, mutations = fuzz_frames(rng)
            tally.tried += 1
            example = ", ".join(mutations)
            try:
                # dtype=object: pandas' Arrow strings cannot even hold a lone surrogate. Rows
                # a source drops while reading (bad times) are counted as "fetch:<reason>".
                fetch_skips: Counter[str] = Counter()
                counted = {"skipped": fetch_skips} if counts_fetch_skips else {}
                frames = TelemetryFrames(
                    conform(pd.DataFrame(spans, dtype=object), "spans", **counted),
                    conform(pd.DataFrame(notes, dtype=object), "annotations"),
                    conform(pd.DataFrame(evals, dtype=object), "evals"),
                    FetchInfo(source="file", project="fuzz"),
                )
                if index % 4 == 0:
                    frames = TelemetryFrames.load(frames.save(folder / "frames.jsonl"))
                checkpoint = build_checkpoint(frames)
                saved = checkpoint.save(folder / "checkpoint.json")
                again = Checkpoint.load(saved)
            except SelfImproveError as exc:
                tally.reject(f"{type(exc).__name__}")
                continue
            except Exception as exc:
                tally.crash(exc, example)
                continue
            tally.skipped.update(checkpoint.provenance.skipped)
            tally.skipped.update({f"fetch:{k}": v for k, v in fetch_skips.items()})
            if again != checkpoint:
                tally.violate("checkpoint save/load changes it", example)
            else:
                tally.accepted += 1
    return tally


# -- runs: injected faults, kill -9 and resume, API keys ----------------------------------------

REPO = Path(__file__).resolve().parents[1]
FAULT_TO_REASON = {
    "rate_limit": "http_429",
    "server_error": "http_500",
    "timeout": "timeout",
    "malformed": "malformed",
}


def _run_config(folder: Path, *, samples: int, steps: int, **sections: Any) -> dict[str, Any]:
    """An experiment on a frozen coffee/sports checkpoint (exact match, sim-keyword)."""
    from selfimprove_rl.mimic import load_dataset

    checkpoint = folder / "checkpoint.json"
    if not checkpoint.exists():
        load_dataset(
            "coffee_sports", model="sim-keyword", eval_kind="exact_match", limit=samples
        ).save(checkpoint)
    config: dict[str, Any] = {
        "name": "reliability",
        "seed": 0,
        "data": {"kind": "checkpoint", "path": str(checkpoint)},
        "target": {"model": "sim-keyword"},
        "policy": {"name": "rule_induction"},
        "env": {"minibatch_size": 16, "max_steps": 6},
        "stopping": {"max_total_steps": steps, "stagnation_steps": steps},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def _injected(run: Any) -> dict[str, int]:
    """Faults the in-process simulated transport injected (by kind) into a run's replays."""
    transport = run.env.unwrapped.replayer.client._client._transport
    injector = transport.api.injector
    return dict(injector.counts) if injector is not None else {}


class _InjectedFaults:
    """Run callback: keeps the faults the in-process transport injected, by kind."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def on_finish(self, run: Any, summary: dict[str, Any]) -> None:
        self.counts = _injected(run)

    def on_promotion(self, run: Any, version_id: str, decision: Any) -> None:
        pass


def section_faults(args: argparse.Namespace) -> Tally:
    """A run under 20% injected faults against the same run on a clean backend."""
    from selfimprove_rl.config import parse_config
    from selfimprove_rl.runner import run_experiment

    tally = Tally("faults")
    steps = 6 if args.quick else 14
    replay = {"max_retries": 8, "backoff_initial_s": 0.002, "backoff_max_s": 0.02}
    faults = {"fail_rate": 0.2, "seed": args.seed, "timeout_hold_s": 0.05, "retry_after_s": 0.01}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, backend in (("clean", {}), ("faulty", {"faults": faults})):
            config = _run_config(folder, samples=120, steps=steps, replay=replay, backend=backend)
            probe = _InjectedFaults()
            tally.tried += 1
            try:
                result = run_experiment(
                    parse_config(config), out=folder / name, progress=False, callbacks=[probe]
                )
            except Exception as exc:
                tally.crash(exc, name)
                continue
            tally.accepted += 1
            summary = result.summary
            results[name] = {
                "summary": summary,
                "injected": probe.counts,
                "prompt": (folder / name / "final_prompt.txt").read_text(encoding="utf-8"),
            }
    if len(results) < 2:
        return tally
    clean, faulty = results["clean"], results["faulty"]
    counted = dict(faulty["summary"]["failed_requests_by_reason"])
    injected = {FAULT_TO_REASON[k]: v for k, v in faulty["injected"].items() if v}
    for reason in sorted(set(counted) | set(injected)):
        if counted.get(reason, 0) != injected.get(reason, 0):
            tally.violate(
                "injected fault not counted",
                f"{reason}: injected {injected.get(reason, 0)}, counted {counted.get(reason, 0)}",
            )
    if clean["prompt"] != faulty["prompt"]:
        tally.violate("promoted prompt differs from the clean run", faulty["prompt"][:200])
    keys = ("calls", "retries", "failures", "steps", "promotions", "test", "holdout")
    tally.extra = {
        "faults_injected_by_kind": faulty["injected"],
        "failed_requests_counted_by_reason": counted,
        "uncounted_fault_kinds": tally.violations["injected fault not counted"],
        "same_promoted_prompt": clean["prompt"] == faulty["prompt"],
        "clean": {k: clean["summary"][k] for k in keys},
        "faulty": {k: faulty["summary"][k] for k in keys},
        "samples_failed_after_retries": faulty["summary"]["failures"],
    }
    return tally


def _subprocess_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _cli_run(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "selfimprove_rl.cli", "run", str(config), "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def _outcome(out: Path) -> dict[str, Any]:
    """What must match between an interrupted run and the reference."""
    from selfimprove_rl.fileio import read_jsonl

    events = list(read_jsonl(out / "versions.jsonl"))
    for event in events:
        event.pop("at", None)
        event.get("build", {}).pop("created_at", None)
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("run_dir")
    return {
        "steps": list(read_jsonl(out / "steps.jsonl")),
        "events": events,
        "summary": summary,
        "prompt": (out / "final_prompt.txt").read_text(encoding="utf-8"),
    }


def section_kill(args: argparse.Namespace) -> Tally:
    """K random SIGKILLs of a real run, each followed by --resume, against a reference run."""
    import signal
    import subprocess

    tally = Tally("kill")
    kills = 3 if args.quick else 8
    rng = random.Random(args.seed + 4)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = _run_config(
            folder,
            samples=80,
            steps=8 if args.quick else 12,
            backend={"faults": {"latency_ms": 40.0}},
            env={"max_calls": 900},
        )
        path = folder / "config.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        toml = folder / "config.toml"
        toml.write_text(_to_toml(config), encoding="utf-8")
        started = time.perf_counter()
        reference = subprocess.run(
            _cli_run(toml, folder / "reference"), capture_output=True, text=True,
            env=_subprocess_env(), cwd=REPO, timeout=1800,
        )  # fmt: skip
        duration = time.perf_counter() - started
        if reference.returncode != 0:
            tally.crash(RuntimeError(reference.stderr[-500:]), "reference run")
            return tally
        out = folder / "killed"
        killed = 0
        for _ in range(kills):
            resume = ("--resume",) if (out / "config.json").exists() else ()
            process = subprocess.Popen(
                _cli_run(toml, out, *resume), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=_subprocess_env(), cwd=REPO,
            )  # fmt: skip
            time.sleep(rng.uniform(0.2, 0.8) * duration)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                killed += 1
            process.wait(timeout=60)
        tally.tried = kills
        resume = ("--resume",) if (out / "config.json").exists() else ()
        final = subprocess.run(
            _cli_run(toml, out, *resume), capture_output=True, text=True,
            env=_subprocess_env(), cwd=REPO, timeout=1800,
        )  # fmt: skip
        if final.returncode != 0:
            tally.crash(RuntimeError(final.stderr[-500:]), "final resume")
            return tally
        expected, got = _outcome(folder / "reference"), _outcome(out)
        numbers = [line["step"] for line in got["steps"]]
        lost_steps = len(set(range(1, len(expected["steps"]) + 1)) - set(numbers))
        duplicated_steps = len(numbers) - len(set(numbers))
        versions = [e["build"]["version_id"] for e in got["events"] if e["event"] == "version"]
        reference_versions = [
            e["build"]["version_id"] for e in expected["events"] if e["event"] == "version"
        ]
        lost_versions = len(set(reference_versions) - set(versions))
        duplicated_versions = len(versions) - len(set(versions))
        for what, count in (
            ("lost step", lost_steps),
            ("duplicated step", duplicated_steps),
            ("lost version", lost_versions),
            ("duplicated version", duplicated_versions),
        ):
            if count:
                tally.violations[what] += count
        for key in ("steps", "events", "prompt"):
            if got[key] != expected[key]:
                tally.violate(f"{key} differ from the uninterrupted run", key)
        if got["summary"] != expected["summary"]:
            diff = [
                k for k in expected["summary"] if got["summary"].get(k) != expected["summary"][k]
            ]
            tally.violate("summary differs from the uninterrupted run", ", ".join(diff))
        tally.accepted = killed
        tally.extra = {
            "kills_sent": killed,
            "run_seconds_uninterrupted": round(duration, 1),
            "steps": len(got["steps"]),
            "lost_steps": lost_steps,
            "duplicated_steps": duplicated_steps,
            "lost_versions": lost_versions,
            "duplicated_versions": duplicated_versions,
            "same_final_prompt": got["prompt"] == expected["prompt"],
            "calls": {
                "reference": expected["summary"]["calls"],
                "resumed": got["summary"]["calls"],
            },
        }
    return tally


def _to_toml(config: dict[str, Any]) -> str:
    """A minimal TOML writer for the flat tables of a run config."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for table, values in config.items():
        if isinstance(values, dict):
            nested = {k: v for k, v in values.items() if isinstance(v, dict)}
            lines.append(f"[{table}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if k not in nested]
            for name, inner in nested.items():
                lines.append(f"[{table}.{name}]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in inner.items()]
    return "\n".join(lines) + "\n"


def section_secrets(args: argparse.Namespace) -> Tally:
    """A fake API key in the environment must not reach any file, log or output."""
    import socket
    import subprocess

    from selfimprove_rl.simulated.server import running_server

    tally = Tally("secrets")
    secret = "sk-bench-" + "".join(random.Random(args.seed).choices("abcdef0123456789", k=40))
    env = {**_subprocess_env(), "SELFIMPROVE_BENCH_KEY": secret}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    captured: list[bytes] = []
    with tempfile.TemporaryDirectory() as tmp, running_server() as base_url:
        folder = Path(tmp)
        for name, url in (("served", base_url), ("down", f"http://127.0.0.1:{closed}/v1")):
            config = _run_config(
                folder,
                samples=60,
                steps=3,
                backend={"kind": "openai", "base_url": url, "api_key_env": "SELFIMPROVE_BENCH_KEY"},
                replay={"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "max_retries": 1},
            )
            toml = folder / f"{name}.toml"
            toml.write_text(_to_toml(config), encoding="utf-8")
            done = subprocess.run(
                _cli_run(toml, folder / name), capture_output=True, env=env, cwd=REPO,
                timeout=1800,
            )  # fmt: skip
            captured += [done.stdout, done.stderr]
            tally.extra[f"{name}_exit_code"] = done.returncode
        files = [path for path in folder.rglob("*") if path.is_file()]
        found = 0
        needle = secret.encode()
        for path in files:
            tally.tried += 1
            if needle in path.read_bytes():
                found += 1
                tally.violate("API key in a written file", str(path.relative_to(folder)))
            else:
                tally.accepted += 1
        for index, stream in enumerate(captured):
            tally.tried += 1
            if needle in stream:
                found += 1
                tally.violate("API key in captured output", f"stream {index}")
            else:
                tally.accepted += 1
        tally.extra["files_scanned"] = len(files)
        tally.extra["bytes_scanned"] = sum(p.stat().st_size for p in files) + sum(
            map(len, captured)
        )
        tally.extra["api_key_occurrences"] = found
    return tally


# -- main --------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[argparse.Namespace], Tally]] = {
    "directives": section_directives,
    "jsonl": section_jsonl,
    "frames": section_frames,
    "faults": section_faults,
    "kill": section_kill,
    "secrets": section_secrets,
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections, print their figures; 1 when any goal-0 figure is not 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"Comma-separated sections to run (default: all of {', '.join(SECTIONS)}).",
    )
    parser.add_argument("--quick", action="store_true", help="Fewer inputs per section.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the fuzzers.")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    results: dict[str, dict[str, Any]] = {}
    failed = False
    for name in names:
        started = time.perf_counter()
        tally = SECTIONS[name](args)
        tally.seconds = time.perf_counter() - started
        tally.print()
        results[name] = tally.figures()
        failed |= tally.failed()
    print(json.dumps(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
