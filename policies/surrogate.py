"""What would an SOP-following model answer? The surrogate the rule-induction coach plans with.

The coach writes prompts in the SOP grammar of :mod:`selfimprove_rl.simulated.sop` (and a
real model reads the same lines as plain instructions). To estimate what an edit would do
without spending model calls, it predicts the target's reply to each input it remembers:

* ``if``/``else if`` rules in order, first match wins: ``mentions`` by whole-word match
  (exact, the grammar's own matcher); ``is about`` when the best cosine between the input
  and the description or one of its facets reaches the *semantic threshold*;
* otherwise the nearest ``example`` whose cosine reaches the *example threshold*;
* otherwise the first ``else``; otherwise no canned reply (a generic answer).

The two thresholds are not known for an arbitrary target model. They start at a prior and
are fitted to evidence (:class:`ThresholdFit`): each time the coach sees which reply the
target actually gave (or whether a candidate's reply was right), the cosine of the deciding
statement is recorded with whether it fired, and the threshold is the cut with the fewest
disagreements. A target that ignores ``is about`` rules (a literal-only model) ends up with
a threshold above every observed cosine, so semantic rules stop looking useful. Likewise the
*reading limit* (how many leading statements the target follows at all; a small model may
read only the first few) is the limit that best explains the outputs seen, and stays "all"
unless a limit explains clearly more of them, and then the largest limit that explains them
about as well as the best one (:meth:`Surrogate.fit_limit`).

Example:
    >>> fit = ThresholdFit(prior=0.3)
    >>> for score, fired in [(0.2, False), (0.27, True), (0.5, True), (0.22, False)]:
    ...     fit.observe(score, fired)
    >>> round(fit.value, 3)
    0.245
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from selfimprove_rl.simulated.sop import Statement, parse_line

_WORD = re.compile(r"\w+")


def reply_key(text: str | None) -> str:
    """Return the comparison key of a reply: lowercase word tokens joined by spaces.

    Example:
        >>> reply_key("  Well, I don't like SPORTS. ")
        'well i don t like sports'
    """
    return " ".join(_WORD.findall((text or "").lower()))


class ThresholdFit:
    """A cosine threshold fitted to ``(score, fired)`` observations.

    The value is the midpoint cut that misclassifies the fewest observations (ties: the cut
    nearest the prior); with no observations it is the prior. Only the most recent
    ``max_observations`` are kept.

    Args:
        prior: the threshold before any evidence.
        max_observations: how many observations to keep.
    """

    def __init__(self, prior: float, max_observations: int = 600) -> None:
        self.prior = float(prior)
        self.max_observations = max_observations
        self.observations: list[tuple[float, bool]] = []
        self._value: float | None = None

    def observe(self, score: float, fired: bool) -> None:
        """Record that a statement with this cosine did (or did not) fire."""
        self.observations.append((round(float(score), 5), bool(fired)))
        if len(self.observations) > self.max_observations:
            del self.observations[: len(self.observations) - self.max_observations]
        self._value = None

    @property
    def value(self) -> float:
        """The fitted threshold."""
        if self._value is None:
            self._value = self._fit()
        return self._value

    def _fit(self) -> float:
        if not self.observations:
            return self.prior
        scores = np.array([s for s, _ in self.observations])
        fired = np.array([f for _, f in self.observations])
        values = np.unique(scores)
        cuts = np.concatenate(
            ([values[0] - 0.01], (values[:-1] + values[1:]) / 2, [values[-1] + 0.01])
        )
        cuts = np.append(cuts, self.prior)
        errors = np.array([np.sum((scores >= cut) != fired) for cut in cuts])
        best = errors.min()
        tied = cuts[errors == best]
        return float(tied[np.argmin(np.abs(tied - self.prior))])

    def state_dict(self) -> dict[str, Any]:
        """Return the observations (JSON-serialisable)."""
        return {"prior": self.prior, "observations": [list(o) for o in self.observations]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore observations saved by :meth:`state_dict`."""
        self.prior = float(state["prior"])
        self.observations = [(float(s), bool(f)) for s, f in state["observations"]]
        self._value = None


@dataclass
class Inputs:
    """The inputs the surrogate predicts for: texts, unit embeddings, reference keys."""

    texts: list[str]
    vectors: np.ndarray
    refs: list[str]

    def subset(self, index: np.ndarray) -> Inputs:
        """Return the inputs at ``index`` (an int array)."""
        return Inputs(
            [self.texts[i] for i in index], self.vectors[index], [self.refs[i] for i in index]
        )

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Routes:
    """Compiled statements over one set of inputs: what fires where, and the fallback."""

    rule_masks: np.ndarray
    rule_replies: list[str]
    example_sims: np.ndarray
    example_replies: list[str]
    example_threshold: float
    fallback: str | None

    @property
    def n(self) -> int:
        """Number of inputs."""
        return int(self.rule_masks.shape[1])

    def after_rules(self, start: int = 0) -> np.ndarray:
        """Return each input's reply when only rules from index ``start`` on are read."""
        replies = np.array([self.fallback] * self.n, dtype=object)
        if self.example_sims.shape[0]:
            best = self.example_sims.argmax(axis=0)
            best_sim = self.example_sims.max(axis=0)
            hit = best_sim >= self.example_threshold
            picked = np.array(self.example_replies, dtype=object)[best]
            replies = np.where(hit, picked, replies)
        masks = self.rule_masks[start:]
        for offset in range(masks.shape[0] - 1, -1, -1):
            replies = np.where(masks[offset], self.rule_replies[start + offset], replies)
        return replies

    def predict(self) -> np.ndarray:
        """Return the predicted reply key per input (``None``: a generic reply)."""
        return self.after_rules(0)

    def taken_before(self, position: int) -> np.ndarray:
        """Return which inputs a rule before ``position`` already answers."""
        if position == 0 or self.rule_masks.shape[0] == 0:
            return np.zeros(self.n, dtype=bool)
        return np.asarray(self.rule_masks[:position].any(axis=0))


def _agreement(predicted: np.ndarray, outputs: np.ndarray, generic: np.ndarray) -> int:
    agree = (predicted == outputs) | (np.array([p is None for p in predicted]) & generic)
    return int(agree.sum())


class Surrogate:
    """Predicts an SOP-following model's replies with fitted thresholds.

    Args:
        embedder: anything with ``encode(texts) -> (n, d)`` unit vectors.
        semantic_prior: prior cosine an ``is about`` rule needs.
        example_prior: prior cosine the nearest ``example`` needs.
    """

    def __init__(self, embedder: Any, semantic_prior: float = 0.25, example_prior: float = 0.2):
        self.embedder = embedder
        self.semantic = ThresholdFit(semantic_prior)
        self.example = ThresholdFit(example_prior)
        self.limit: int | None = None
        self._prompts: dict[tuple[str, ...], int] = {}
        self._evidence: list[tuple[int, str, str]] = []

    def readable(self, statements: Sequence[Statement]) -> list[Statement]:
        """Return the statements the target reads: the first ``limit`` (all when unknown)."""
        return list(statements) if self.limit is None else list(statements)[: self.limit]

    # ------------------------------------------------------------------ parsing
    @staticmethod
    def statements(lines: Sequence[str]) -> list[Statement]:
        """Return the understood statements of ``lines`` (numbered from 1)."""
        parsed = (parse_line(line, number) for number, line in enumerate(lines, start=1))
        return [s for s in parsed if s is not None]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit embeddings of ``texts``."""
        return np.asarray(self.embedder.encode(list(texts)), dtype=np.float32)

    def about_scores(self, statement: Statement, inputs: Inputs) -> np.ndarray:
        """Return each input's best cosine with an ``is about`` rule's description or facets."""
        facets = self.encode(statement.facets)
        return np.asarray((inputs.vectors @ facets.T).max(axis=1))

    def rule_mask(self, statement: Statement, inputs: Inputs) -> np.ndarray:
        """Return which inputs a rule fires on."""
        if statement.kind == "mentions":
            return np.array([statement.matches(text) for text in inputs.texts], dtype=bool)
        return self.about_scores(statement, inputs) >= self.semantic.value

    def compile(self, statements: Sequence[Statement], inputs: Inputs) -> Routes:
        """Compile the statements the target reads (in prompt order) over ``inputs``."""
        statements = self.readable(statements)
        rules = [s for s in statements if s.is_rule]
        examples = [s for s in statements if s.kind == "example"]
        fallback = next((s for s in statements if s.kind == "else"), None)
        masks = np.zeros((len(rules), len(inputs)), dtype=bool)
        for index, rule in enumerate(rules):
            masks[index] = self.rule_mask(rule, inputs)
        if examples:
            example_vectors = self.encode([s.example_input for s in examples])
            sims = np.asarray(example_vectors @ inputs.vectors.T)
        else:
            sims = np.zeros((0, len(inputs)), dtype=np.float32)
        return Routes(
            rule_masks=masks,
            rule_replies=[reply_key(s.reply) for s in rules],
            example_sims=sims,
            example_replies=[reply_key(s.reply) for s in examples],
            example_threshold=self.example.value,
            fallback=reply_key(fallback.reply) if fallback else None,
        )

    def accuracy(self, statements: Sequence[Statement], inputs: Inputs) -> float:
        """Return the share of inputs whose predicted reply is their reference."""
        if not len(inputs):
            return 0.0
        predicted = self.compile(statements, inputs).predict()
        return float(np.mean(predicted == np.array(inputs.refs, dtype=object)))

    # ------------------------------------------------------------------ evidence
    def observe(
        self,
        statements: Sequence[Statement],
        inputs: Inputs,
        outputs: Sequence[str | None],
        correct: Sequence[bool],
    ) -> int:
        """Fit the thresholds to what the target did under ``statements``.

        For each input the rules are walked in order: a literal match ends the walk; for an
        ``is about`` rule, whether it fired is read from the output when known (``outputs``)
        or, when only correctness is known, from whether the reference is that rule's reply.
        When no rule fired, the nearest example gives an example-threshold observation.
        Undecidable cases are skipped.

        Returns:
            The number of observations recorded.
        """
        if not len(inputs):
            return 0
        statements = self.readable(statements)
        rules = [s for s in statements if s.is_rule]
        examples = [s for s in statements if s.kind == "example"]
        fallback = next((s for s in statements if s.kind == "else"), None)
        fallback_key = reply_key(fallback.reply) if fallback else None
        about = {id(r): self.about_scores(r, inputs) for r in rules if r.kind == "about"}
        sims = (
            np.asarray(self.encode([s.example_input for s in examples]) @ inputs.vectors.T)
            if examples
            else None
        )
        recorded = 0
        for i in range(len(inputs)):
            output = reply_key(outputs[i]) if outputs[i] is not None else None
            reference = inputs.refs[i]
            decided = True
            for rule in rules:
                key = reply_key(rule.reply)
                if rule.kind == "mentions":
                    if rule.matches(inputs.texts[i]):
                        decided = False
                        break
                    continue
                fired = _fired(key, output, reference, correct[i])
                if fired is None:
                    decided = False
                    break
                self.semantic.observe(float(about[id(rule)][i]), fired)
                recorded += 1
                if fired:
                    decided = False
                    break
            if not decided or sims is None:
                continue
            best = int(sims[:, i].argmax())
            best_key = reply_key(examples[best].reply)
            if best_key == fallback_key:
                continue
            fired = _fired(best_key, output, reference, correct[i])
            if fired is None:
                continue
            self.example.observe(float(sims[best, i]), fired)
            recorded += 1
        return recorded

    def record(
        self, lines: Sequence[str], texts: Sequence[str], outputs: Sequence[str], *, keep: int = 400
    ) -> None:
        """Keep what the target answered under ``lines`` and refit the reading limit.

        The limit is the number of leading statements that best explains the outputs; it
        stays unknown (all statements) unless a limit explains at least ``margin`` more
        outputs than reading everything (see :meth:`fit_limit`).
        """
        key = tuple(lines)
        index = self._prompts.setdefault(key, len(self._prompts))
        self._evidence.extend((index, t, reply_key(o)) for t, o in zip(texts, outputs, strict=True))
        if len(self._evidence) > keep:
            del self._evidence[: len(self._evidence) - keep]
            used = {i for i, _, _ in self._evidence}
            self._prompts = {p: i for p, i in self._prompts.items() if i in used}
        self.limit = self.fit_limit()

    def fit_limit(self, margin: int = 3) -> int | None:
        """Return the reading limit that explains the recorded outputs (None: no limit).

        A limit is assumed only when it explains at least ``margin`` more outputs than
        reading everything; then it is the *largest* limit within ``margin`` of the best one
        (a slightly misfitted threshold should not make the target look more limited than
        it is). A prediction of no canned reply agrees with any output that is none of the
        prompt's replies (the target's own generic answer).
        """
        by_prompt: dict[int, list[tuple[str, str]]] = {}
        for index, text, output in self._evidence:
            by_prompt.setdefault(index, []).append((text, output))
        lines_of = {i: p for p, i in self._prompts.items()}
        groups = []
        for index, rows in by_prompt.items():
            statements = self.statements(lines_of[index])
            texts = [t for t, _ in rows]
            inputs = Inputs(texts, self.encode(texts), ["" for _ in rows])
            outputs = np.array([o for _, o in rows], dtype=object)
            canned = {reply_key(s.reply) for s in statements}
            generic = np.array([o not in canned for o in outputs])
            groups.append((statements, inputs, outputs, generic))
        longest = max((len(g[0]) for g in groups), default=0)
        saved, scores = self.limit, {}
        try:
            for limit in [None, *range(1, longest)]:
                self.limit = limit
                scores[limit] = sum(
                    _agreement(self.compile(st, inputs).predict(), out, generic)
                    for st, inputs, out, generic in groups
                )
        finally:
            self.limit = saved
        top = max(scores.values())
        eligible = [
            k
            for k, score in scores.items()
            if k is not None and score >= scores[None] + margin and score > top - margin
        ]
        return max(eligible, default=None)

    def state_dict(self) -> dict[str, Any]:
        """Return the threshold fits and the reading-limit evidence (JSON-serialisable)."""
        return {
            "semantic": self.semantic.state_dict(),
            "example": self.example.state_dict(),
            "limit": self.limit,
            "prompts": [[list(p), i] for p, i in self._prompts.items()],
            "evidence": [list(e) for e in self._evidence],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.semantic.load_state_dict(state["semantic"])
        self.example.load_state_dict(state["example"])
        self.limit = state.get("limit")
        self._prompts = {tuple(p): int(i) for p, i in state.get("prompts", [])}
        self._evidence = [(int(i), str(t), str(o)) for i, t, o in state.get("evidence", [])]


def _fired(key: str, output: str | None, reference: str, correct: bool) -> bool | None:
    """Did the statement answering ``key`` fire? ``None`` when the evidence cannot tell.

    Read from the output when it is known; else a correct answer fired exactly when the
    reference is ``key``, and a wrong one did not fire when the reference is ``key``.
    """
    if output is not None:
        return output == key
    if correct:
        return reference == key
    return False if reference == key else None
