"""Which rule edits could the coach make, and what is each worth? Candidates for one decision.

:class:`CandidateBuilder` lists every edit the rule-induction coach considers on the SOP block
(:class:`SopLayout`) and scores each with the documented statistic
(:func:`policies.induction.paired_gain` over cross-validated answers, minus the prompt-token
cost):

* add a ``mentions`` or ``is about`` rule for any class: after the block's last rule (before
  its examples and ``else``), or before its first rule, where a precise rule answers first
  (e.g. literal terms ahead of a broad description of the same class, or of another class);
* add representative examples for any classes (one step, several lines), or replace all
  example lines with a set re-induced from the whole memory;
* edit a rule: extend it with more terms, re-induce it, or switch its kind;
* add the ``else`` fallback for the class the rules describe worst (lowest estimated recall),
  or, in one compound step, move the fallback there and add a rule for the old one; when the
  target reads only its first statements (a learned reading limit), move an ``else`` it
  never reaches to the last place it reads, dropping the unread lines in between;
* delete any understood statement.

Each candidate carries its directive text, the estimate, the prompt-token change and, in
``meta``, a signature (operation, kind, class) by which rejected changes are banned, the base
version and the block lines it would produce.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

import numpy as np

from policies.base import Observation
from policies.induction import (
    InductionConfig,
    Pool,
    Spot,
    cross_validated_correct,
    induce_examples,
    induce_rule,
    paired_gain,
    parsed,
    statement_of,
)
from policies.proposers import Candidate, estimate_tokens
from policies.surrogate import reply_key
from selfimprove_rl.simulated.sop import Statement

RuleKind = Literal["mentions", "about"]


class SopLayout:
    """The observed blocks, the block being edited and its understood statements.

    Args:
        observation: a PromptEnv observation.
        block: the block to edit (default: ``sop``, else the last block).
    """

    def __init__(self, observation: Observation, block: str | None) -> None:
        blocks = {
            name: (text.split("\n") if text else [])
            for name, text in dict(observation.get("blocks") or {}).items()
        }
        if not blocks:
            blocks = {"sop": []}
        self.target: str = (
            block
            if block is not None and block in blocks
            else ("sop" if "sop" in blocks else list(blocks)[-1])
        )
        names = list(blocks)
        at = names.index(self.target)
        self.pre = parsed([line for name in names[:at] for line in blocks[name]])
        self.post = parsed([line for name in names[at + 1 :] for line in blocks[name]])
        self.lines = blocks[self.target]
        self.numbered: list[tuple[int, Statement]] = [
            (number, s)
            for number, s in ((n, statement_of(line)) for n, line in enumerate(self.lines, 1))
            if s is not None
        ]
        self.all_lines = [line for name in names for line in blocks[name]]
        self.start = sum(len(blocks[name]) for name in names[:at])

    def statements(self) -> list[Statement]:
        """Return every understood statement of the prompt, in order."""
        return [*self.pre, *(s for _, s in self.numbered), *self.post]

    def spot(
        self,
        line: int,
        *,
        skip: int | Collection[int] = (),
        replace: dict[int, Statement] | None = None,
    ) -> Spot:
        """Statements around a new line inserted at ``line`` (1-based, before the old one).

        ``skip`` names block lines left out (being replaced); ``replace`` swaps statements.
        """
        replace = replace or {}
        skipped = {skip} if isinstance(skip, int) else set(skip)
        kept = [(n, replace.get(n, s)) for n, s in self.numbered if n not in skipped]
        before = [s for n, s in kept if n < line]
        after = [s for n, s in kept if n >= line]
        return Spot(before=(*self.pre, *before), after=(*after, *self.post))

    def rule_insert_line(self) -> int:
        """Return where a new rule goes: after the last rule, else before the first statement."""
        rules = [n for n, s in self.numbered if s.is_rule]
        if rules:
            return rules[-1] + 1
        rest = [n for n, s in self.numbered if not s.is_rule]
        return rest[0] if rest else len(self.lines) + 1

    def first_rule_line(self) -> int | None:
        """Return the line of the block's first rule (``None``: the block has no rule)."""
        return next((n for n, s in self.numbered if s.is_rule), None)

    def example_insert_line(self) -> int:
        """Return where new examples go: after the last example, else before the ``else``."""
        examples = [n for n, s in self.numbered if s.kind == "example"]
        if examples:
            return examples[-1] + 1
        fallbacks = [n for n, s in self.numbered if s.kind == "else"]
        return fallbacks[0] if fallbacks else len(self.lines) + 1

    def else_line(self) -> tuple[int, Statement] | None:
        """Return the block's first ``else`` statement and its line number, if any."""
        return next(((n, s) for n, s in self.numbered if s.kind == "else"), None)


class CandidateBuilder:
    """Builds and scores every candidate edit for one decision (see the module docstring).

    Args:
        proposer: the name candidates are labelled with.
        induction: the statistic's knobs.
        kinds: rule kinds it may write.
        pool: the remembered inputs.
        layout: the observed prompt.
        classes: class key → reply text.
        current: which remembered inputs the current prompt answers correctly.
        base: the version the edits apply to.
    """

    def __init__(
        self,
        proposer: str,
        induction: InductionConfig,
        kinds: Sequence[str],
        pool: Pool,
        layout: SopLayout,
        classes: dict[str, str],
        current: np.ndarray,
        base: str,
    ) -> None:
        self.proposer = proposer
        self.kinds = tuple(kinds)
        self.induction = induction
        self.pool = pool
        self.layout = layout
        self.classes = classes
        self.current = current
        self.base = base
        self.everything = np.arange(pool.n)
        self.rule_kinds: list[RuleKind] = [k for k in ("mentions", "about") if k in self.kinds]

    def _estimate(self, correct: np.ndarray, tokens: int, confidence: float) -> float:
        gain = paired_gain(correct, self.current, confidence)
        return gain - self.induction.token_weight * tokens

    def _candidate(
        self,
        *,
        op: str,
        kind: str,
        key: str,
        body: list[str],
        new_lines: list[str],
        correct: np.ndarray,
        rationale: str,
    ) -> Candidate:
        old_tokens = sum(estimate_tokens(line) for line in self.layout.lines)
        tokens = sum(estimate_tokens(line) for line in new_lines) - old_tokens
        all_lines = [*self._outside_before(), *new_lines, *self._outside_after()]
        return Candidate(
            edits="\n".join([f"BLOCK: {self.layout.target}", *body]),
            rationale=rationale,
            prompt_tokens=tokens,
            proposer=self.proposer,
            kind=kind,
            estimate=round(self._estimate(correct, tokens, self.induction.confidence), 6),
            meta={
                "point": round(self._estimate(correct, tokens, 0.0), 6),
                "upper": round(self._estimate(correct, tokens, -self.induction.confidence), 6),
                "changes": int(np.sum(correct != self.current)),
                "signature": f"{op}:{kind}:{key}",
                "base": self.base,
                "lines": all_lines,
                "class": self.classes.get(key, key),
            },
        )

    def _outside_before(self) -> list[str]:
        return self.layout.all_lines[: self.layout.start]

    def _outside_after(self) -> list[str]:
        return self.layout.all_lines[self.layout.start + len(self.layout.lines) :]

    # ------------------------------------------------------------------ helpers
    def _rule(
        self, kind: RuleKind, key: str, spot: Spot, start: Sequence[str] = ()
    ) -> tuple[list[str], np.ndarray]:
        """Induce a rule on all memory, and its cross-validated correct count."""

        def inducer(index: np.ndarray) -> list[str]:
            return induce_rule(
                kind, self.pool, key, self.classes[key], spot, index, self.induction, start
            )

        lines = inducer(self.everything)
        if not lines:
            return [], np.zeros(self.pool.n, dtype=bool)
        return lines, cross_validated_correct(inducer, self.pool, spot, self.induction.folds)

    def _rule_recall(self, key: str) -> float:
        """Share of class ``key`` on which one of the prompt's rules for it fires."""
        members = np.array(
            [i for i in self.everything if self.pool.inputs.refs[i] == key], dtype=int
        )
        statements = self.pool.surrogate.readable(self.layout.statements())
        rules = [s for s in statements if s.is_rule]
        rows = [i for i, s in enumerate(rules) if reply_key(s.reply) == key]
        if not len(members) or not rows:
            return 0.0
        routes = self.pool.routes(statements, members)
        return float(routes.rule_masks[rows].any(axis=0).mean())

    def all(self) -> list[Candidate]:
        """Return every candidate with its estimate."""
        candidates: list[Candidate] = []
        recall: dict[str, float] = {}
        ruled = {reply_key(s.reply) for s in self.layout.statements() if s.is_rule}
        insert = self.layout.rule_insert_line()
        first = self.layout.first_rule_line()
        for key in self.classes:
            best = 0.0
            share = sum(1 for r in self.pool.inputs.refs if r == key) / max(1, self.pool.n)
            for kind in self.rule_kinds:
                made = self._add_rule(kind, key, insert, op="add" if key not in ruled else "add+")
                if made is not None:
                    candidates.append(made)
                    best = max(best, (made.estimate or 0.0) / max(share, 1e-9))
                if first is not None:
                    made = self._add_rule(kind, key, first, op="add^")
                    if made is not None:
                        candidates.append(made)
            recall[key] = self._rule_recall(key) if key in ruled else best
        if "examples" in self.kinds:
            for made in (self._add_examples(), self._redo_examples()):
                if made is not None:
                    candidates.append(made)
        candidates += self._edits()
        candidates += self._fallbacks(recall)
        made = self._else_into_reach()
        if made is not None:
            candidates.append(made)
        candidates += self._deletions()
        return candidates

    # ------------------------------------------------------------------ operations
    def _add_rule(self, kind: RuleKind, key: str, line: int, op: str = "add") -> Candidate | None:
        spot = self.layout.spot(line)
        new, correct = self._rule(kind, key, spot)
        if not new:
            return None
        lines = list(self.layout.lines)
        lines[line - 1 : line - 1] = new
        what = "literal terms" if kind == "mentions" else "a description"
        where = {"add": "", "add+": " after the other rules", "add^": " before the other rules"}
        return self._candidate(
            op=op,
            kind=kind,
            key=key,
            body=[f"ADD {line}: {new[0]}"],
            new_lines=lines,
            correct=correct,
            rationale=f"Route '{self.classes[key][:40]}' by {what}{where[op]} "
            f"from {self.pool.n} examples.",
        )

    def _add_examples(self) -> Candidate | None:
        line = self.layout.example_insert_line()
        spot = self.layout.spot(line)

        def inducer(index: np.ndarray) -> list[str]:
            return induce_examples(self.pool, self.classes, spot, index, self.induction)

        new = inducer(self.everything)
        if not new:
            return None
        correct = cross_validated_correct(inducer, self.pool, spot, self.induction.folds)
        lines = list(self.layout.lines)
        lines[line - 1 : line - 1] = new
        return self._candidate(
            op="add",
            kind="examples",
            key="*",
            body=[f"ADD {line}: {text}" for text in new],
            new_lines=lines,
            correct=correct,
            rationale=f"Show {len(new)} representative examples (k-means medoids).",
        )

    def _redo_examples(self) -> Candidate | None:
        """Replace every example line with a set induced afresh from the whole memory."""
        shown = [n for n, s in self.layout.numbered if s.kind == "example"]
        if not shown:
            return None
        line = shown[0]
        spot = self.layout.spot(line, skip=shown)

        def inducer(index: np.ndarray) -> list[str]:
            return induce_examples(self.pool, self.classes, spot, index, self.induction)

        new = inducer(self.everything)
        old = {self.layout.lines[n - 1].strip() for n in shown}
        if not new or set(new) == old:
            return None
        correct = cross_validated_correct(inducer, self.pool, spot, self.induction.folds)
        lines = [text for n, text in enumerate(self.layout.lines, 1) if n not in shown]
        at = line - 1 - sum(1 for n in shown if n < line)
        lines[at:at] = new
        return self._candidate(
            op="redo",
            kind="examples",
            key="*",
            body=[*(f"DEL: {n}" for n in shown), *(f"ADD {line}: {text}" for text in new)],
            new_lines=lines,
            correct=correct,
            rationale=f"Re-pick the examples from {self.pool.n} remembered inputs.",
        )

    def _edits(self) -> list[Candidate]:
        made: list[Candidate] = []
        for number, statement in self.layout.numbered:
            if not statement.is_rule:
                continue
            key = reply_key(statement.reply)
            if key not in self.classes:
                continue
            spot = self.layout.spot(number, skip=number)
            tries: list[tuple[RuleKind, tuple[str, ...]]] = [(k, ()) for k in self.rule_kinds]
            if statement.kind in self.rule_kinds:
                kept = statement.terms if statement.kind == "mentions" else statement.facets[1:]
                tries.append((statement.kind, kept))
            for kind, start in tries:
                new, correct = self._rule(kind, key, spot, start)
                if not new or new[0] == self.layout.lines[number - 1].strip():
                    continue
                lines = list(self.layout.lines)
                lines[number - 1] = new[0]
                made.append(
                    self._candidate(
                        op=f"edit{number}{'+' if start else ''}",
                        kind=kind,
                        key=key,
                        body=[f"EDIT: {number} -> {new[0]}"],
                        new_lines=lines,
                        correct=correct,
                        rationale=(
                            f"Extend rule {number} from {self.pool.n} examples."
                            if start
                            else f"Rewrite rule {number} as {kind} from {self.pool.n} examples."
                        ),
                    )
                )
        return made

    def _else_into_reach(self) -> Candidate | None:
        """Move an ``else`` the target never reads to the last line it does read.

        A target that reads only its first statements (the surrogate's learned reading
        limit) never reaches a fallback below them; the statements between the limit and the
        ``else`` are not read either, so they are dropped and the ``else`` takes the last
        read place.
        """
        limit = self.pool.surrogate.limit
        reach = None if limit is None else limit - len(self.layout.pre)
        fallback = self.layout.else_line()
        if reach is None or reach < 1 or fallback is None:
            return None
        order = [n for n, _ in self.layout.numbered]
        if order.index(fallback[0]) < reach:
            return None
        kept = set(order[: reach - 1])
        dropped = [n for n in order if n not in kept]
        lines = [
            text
            for n, text in enumerate(self.layout.lines, 1)
            if n not in dropped or statement_of(text) is None
        ]
        lines.append(fallback[1].text)
        statements = [*self.layout.pre, *parsed(lines), *self.layout.post]
        return self._candidate(
            op="reach",
            kind="else",
            key=reply_key(fallback[1].reply),
            body=[*(f"DEL: {n}" for n in dropped), f"ADD: {fallback[1].text}"],
            new_lines=lines,
            correct=self.pool.correct(statements, self.everything),
            rationale=f"The target reads {limit} statements: bring the else within reach.",
        )

    def _fallbacks(self, recall: dict[str, float]) -> list[Candidate]:
        if not recall:
            return []
        target = min(recall, key=lambda key: (recall[key], key))
        existing = self.layout.else_line()
        text = f'else: respond "{self.classes[target]}"'
        if existing is None:
            lines = [*self.layout.lines, text]
            statements = [*self.layout.pre, *parsed(lines), *self.layout.post]
            correct = self.pool.correct(statements, self.everything)
            return [
                self._candidate(
                    op="else",
                    kind="else",
                    key=target,
                    body=[f"ADD: {text}"],
                    new_lines=lines,
                    correct=correct,
                    rationale="Send what no rule matches to the reply the rules describe worst.",
                )
            ]
        number, statement = existing
        old = reply_key(statement.reply)
        if old == target or old not in self.classes:
            return []
        if recall.get(old, 1.0) <= recall[target] + 0.1:
            return []
        made: list[Candidate] = []
        new_else = statement_of(text)
        if new_else is None:
            return []
        insert = self.layout.rule_insert_line()
        spot = self.layout.spot(insert, replace={number: new_else})
        for kind in self.rule_kinds:
            rule, correct = self._rule(kind, old, spot)
            if not rule:
                continue
            lines = list(self.layout.lines)
            lines[number - 1] = text
            lines[insert - 1 : insert - 1] = rule
            made.append(
                self._candidate(
                    op="swap",
                    kind="swap",
                    key=f"{old}>{target}",
                    body=[f"EDIT: {number} -> {text}", f"ADD {insert}: {rule[0]}"],
                    new_lines=lines,
                    correct=correct,
                    rationale="Move the fallback to the worst-described reply; rule the old one.",
                )
            )
        return made

    def _deletions(self) -> list[Candidate]:
        made: list[Candidate] = []
        for number, statement in self.layout.numbered:
            lines = [line for n, line in enumerate(self.layout.lines, 1) if n != number]
            statements = [*self.layout.pre, *parsed(lines), *self.layout.post]
            correct = self.pool.correct(statements, self.everything)
            made.append(
                self._candidate(
                    op=f"del{number}",
                    kind="delete",
                    key=reply_key(statement.reply),
                    body=[f"DEL: {number}"],
                    new_lines=lines,
                    correct=correct,
                    rationale=f"Line {number} does more harm than good.",
                )
            )
        return made
