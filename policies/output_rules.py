r"""Edits learned from observed outputs: the ``output_rules`` proposer and a greedy coach.

:class:`OutputRuleProposer` knows nothing about the model it edits a prompt for. It remembers
every input it has seen with the output the call *should* have given (``info["examples"]``
rows with a reference), and proposes plain, explicit lines for the rows the call currently
gets wrong:

* **keyword rules** — ``if input mentions a, b or c: respond "<reference>"`` with terms that,
  among every remembered input, occur mostly (``min_precision``) with that reference and in
  at least ``min_support`` of its inputs, chosen greedily to cover the failing rows;
* **examples** — ``example: "<input>" -> "<reference>"`` for failing rows, worst first, one
  reference after another, each reference shown at least ``examples_per_reference`` times
  (topped up with remembered inputs of that reference): a small real model paraphrases a
  reply it is shown once and copies one shown twice (``benchmarks/bench_real.py``); one
  example per input, and only with the reference that input usually needs (a downstream
  node sees the same input with other references when an upstream node erred);
* **a fallback** — ``else: respond "<reference>"`` for the reference whose failing inputs the
  keyword rules describe worst, when the block has no fallback yet.

Each candidate carries its estimated gain (failing rows it addresses). It is a small, generic
learner of the kind a single node of a program needs (a router's labels, a responder's
replies); it never imports the simulated model. :class:`ProposerCoach` is the matching
single-call policy: each step it takes the best candidate it has not tried on the current
version.

Example:
    >>> proposer = OutputRuleProposer()
    >>> rows = [{"input": "refund please", "output": "?", "reference": "billing", "score": 0.0},
    ...         {"input": "refund now", "output": "?", "reference": "billing", "score": 0.0},
    ...         {"input": "where is my parcel", "output": "?", "reference": "shipping",
    ...          "score": 0.0}, {"input": "refund it", "output": "?", "reference": "billing",
    ...          "score": 0.0}]
    >>> best = proposer.propose({"blocks": {"sop": ""}}, {"examples": rows}, k=3)[0]
    >>> best.directive_text()
    'BLOCK: sop\nADD: if input mentions refund: respond "billing"'
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from policies.base import BasePolicy, Observation, Transition
from policies.catalog import make_proposer
from policies.proposers import Candidate, no_change_candidate
from selfimprove_rl.prompt import AddLine, Edit

_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_STOPWORDS = frozenset(
    "a an the i i'm im me my mine you your we our it its it's is are was were be been am do "
    "does did don't to of in on at for with and or but so if then that this these those there "
    "here what which who how when why not no yes just very really can can't could would should "
    "will have has had from by about as into out up down over some any all too also get got "
    "one two than them they he she his her please thanks thank hi hello".split()
)
_KEY_SEP = "\x1f"
_EXAMPLE_LINE = re.compile(r'^\s*example\s*(?:\d+\s*)?:\s*"(.*?)"\s*(?:->|→|=>)\s*"?(.*?)"?\s*$')
_FALLBACK = re.compile(r"^\s*(?:[-*•]\s+)?(?:else|otherwise)\s*[:,]", re.IGNORECASE)


def words(text: str) -> set[str]:
    """Lowercased content words of ``text`` (stopwords and one-letter words dropped).

    Example:
        >>> sorted(words("Where is my PARCEL? It's late."))
        ['late', 'parcel', 'where']
    """
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def _quoted(text: str) -> str:
    return " ".join(text.split())


class OutputRuleProposer:
    """Keyword rules, examples and a fallback, learned from remembered inputs and references.

    Args:
        seed: unused (the proposer is deterministic); accepted like every proposer's.
        min_support: remembered inputs of a reference a term must occur in.
        min_precision: share of the remembered inputs holding a term that must have the
            reference.
        max_terms: terms per keyword rule.
        max_examples: example lines per candidate.
        examples_per_reference: example lines a reference needs in the prompt before it is
            copied; a candidate adds as many of a reference as it lacks.
        block: the block to edit (default: ``sop`` when observed, else the last block).
    """

    name = "output_rules"

    def __init__(
        self,
        seed: int | None = None,
        *,
        min_support: int = 3,
        min_precision: float = 0.8,
        max_terms: int = 6,
        max_examples: int = 6,
        examples_per_reference: int = 2,
        block: str | None = None,
    ) -> None:
        self.seed = seed
        self.min_support = min_support
        self.min_precision = min_precision
        self.max_terms = max_terms
        self.max_examples = max_examples
        self.examples_per_reference = examples_per_reference
        self.block = block
        self.memory: dict[str, str] = {}
        """Sample id and input (joined by a unit separator) -> the reference."""

    def remember(self, info: Mapping[str, Any]) -> None:
        """Keep every (input, reference) of ``info["examples"]``, one entry per sample and input.

        Keyed by sample id and input, so that many samples sharing one input (a label) each
        count as support, and one sample seen again is not counted twice.
        """
        for row in info.get("examples") or ():
            reference, text = row.get("reference"), row.get("input")
            if isinstance(reference, str) and reference.strip() and isinstance(text, str):
                self.memory[f"{row.get('sample_id', '')}{_KEY_SEP}{text}"] = reference

    def _target_block(self, observation: Observation) -> str:
        blocks = list(dict(observation.get("blocks") or {}))
        if self.block is not None:
            return self.block
        return "sop" if "sop" in blocks or not blocks else blocks[-1]

    def _usual_references(self) -> dict[str, str]:
        """Input text -> the reference most remembered samples with that input need."""
        votes: dict[str, Counter[str]] = defaultdict(Counter)
        for key, reference in self.memory.items():
            votes[_quoted(key.rpartition(_KEY_SEP)[2])][reference] += 1
        return {text: counts.most_common(1)[0][0] for text, counts in votes.items()}

    def _precise_terms(self) -> dict[str, dict[str, int]]:
        """Reference -> precise term -> its support among that reference's inputs."""
        with_reference: dict[str, Counter[str]] = defaultdict(Counter)
        overall: Counter[str] = Counter()
        for key, reference in self.memory.items():
            for word in words(key.rpartition(_KEY_SEP)[2]):
                with_reference[reference][word] += 1
                overall[word] += 1
        precise: dict[str, dict[str, int]] = {}
        for reference, counts in with_reference.items():
            precise[reference] = {
                term: count
                for term, count in counts.items()
                if count >= self.min_support and count / overall[term] >= self.min_precision
            }
        return precise

    def propose(self, observation: Observation, info: Mapping[str, Any], k: int) -> list[Candidate]:
        """Return up to ``k`` candidates for the failing rows, largest estimated gain first."""
        self.remember(info)
        block = self._target_block(observation)
        lines = [
            line for line in str(dict(observation.get("blocks") or {}).get(block, "")).split("\n")
        ]
        lines = [line for line in lines if line.strip()]
        failing = [
            row
            for row in info.get("examples") or ()
            if isinstance(row.get("reference"), str)
            and row.get("reference")
            and float(row.get("score", 0.0)) < 1.0 - 1e-9
        ]
        if not failing:
            return []
        precise = self._precise_terms()
        candidates = [
            *self._keyword_rules(failing, precise, lines, block),
            *self._examples(failing, lines, block),
            *self._fallback(failing, precise, lines, block),
        ]
        candidates.sort(key=lambda c: -(c.estimate or 0.0))
        return candidates[: max(0, k)]

    def _position(self, lines: list[str]) -> int | None:
        """Rules go before the block's fallback line, if it has one."""
        for number, line in enumerate(lines, start=1):
            if _FALLBACK.match(line):
                return number
        return None

    def _keyword_rules(
        self,
        failing: list[Mapping[str, Any]],
        precise: dict[str, dict[str, int]],
        lines: list[str],
        block: str,
    ) -> list[Candidate]:
        by_reference: dict[str, list[set[str]]] = defaultdict(list)
        for row in failing:
            by_reference[row["reference"]].append(words(row["input"]))
        candidates = []
        for reference, inputs in by_reference.items():
            terms = precise.get(reference, {})
            chosen: list[str] = []
            uncovered = list(inputs)
            while uncovered and len(chosen) < self.max_terms:
                gains = Counter(t for found in uncovered for t in found if t in terms)
                if not gains:
                    break
                term = max(gains, key=lambda t: (gains[t], terms[t], t))
                chosen.append(term)
                uncovered = [found for found in uncovered if term not in found]
            if not chosen:
                continue
            line = f'if input mentions {", ".join(sorted(chosen))}: respond "{_quoted(reference)}"'
            if line in lines:
                continue
            covered = len(inputs) - len(uncovered)
            candidates.append(
                Candidate(
                    edits=[AddLine(text=line, block=block, position=self._position(lines))],
                    rationale=f"{covered} failing inputs say one of {chosen}.",
                    proposer=self.name,
                    kind="mentions",
                    estimate=float(covered),
                )
            )
        return candidates

    def _examples(
        self, failing: list[Mapping[str, Any]], lines: list[str], block: str
    ) -> list[Candidate]:
        shown = [m for line in lines if (m := _EXAMPLE_LINE.match(line))]
        shown_inputs = {m.group(1) for m in shown}
        times_shown = Counter(_quoted(m.group(2)) for m in shown)
        usual = self._usual_references()
        queues: dict[str, list[str]] = defaultdict(list)
        for row in sorted(failing, key=lambda r: (float(r.get("score", 0.0)), str(r["input"]))):
            text = _quoted(row["input"])
            # one example per input, and only with the reply that input usually needs
            if text not in shown_inputs and usual.get(text, row["reference"]) == row["reference"]:
                if text not in queues[row["reference"]]:
                    queues[row["reference"]].append(text)
        spare = {
            reference: sorted(t for t, r in usual.items() if r == reference and t not in queue)
            for reference, queue in queues.items()
        }
        picked: list[Edit] = []

        def add(text: str, reference: str) -> None:
            line = f'example: "{text}" -> "{_quoted(reference)}"'
            if text not in shown_inputs and line not in lines:
                shown_inputs.add(text)
                times_shown[_quoted(reference)] += 1
                picked.append(AddLine(text=line, block=block))

        progressed = True
        while progressed and len(picked) < self.max_examples:
            progressed = False
            for reference in sorted(queues, key=lambda r: -len(queues[r])):
                lacking = max(1, self.examples_per_reference - times_shown[_quoted(reference)])
                if not queues[reference] or len(picked) + lacking > self.max_examples:
                    continue  # nothing failing, or too few lines left to show it enough
                progressed = True
                add(queues[reference].pop(0), reference)
                while times_shown[_quoted(reference)] < self.examples_per_reference and (
                    queues[reference] or spare[reference]
                ):
                    add((queues[reference] or spare[reference]).pop(0), reference)
        if not picked:
            return []
        return [
            Candidate(
                edits=picked,
                rationale=f"Show {len(picked)} inputs (failing ones first) with the reply they "
                f"need, each reply {self.examples_per_reference}+ times.",
                proposer=self.name,
                kind="example",
                estimate=0.5 * len(picked),
            )
        ]

    def _fallback(
        self,
        failing: list[Mapping[str, Any]],
        precise: dict[str, dict[str, int]],
        lines: list[str],
        block: str,
    ) -> list[Candidate]:
        if any(_FALLBACK.match(line) for line in lines):
            return []
        described = {term for terms in precise.values() for term in terms}
        undescribed = Counter(
            row["reference"] for row in failing if not (words(row["input"]) & described)
        )
        if not undescribed:
            undescribed = Counter(row["reference"] for row in failing)
        reference, count = max(undescribed.items(), key=lambda item: (item[1], item[0]))
        return [
            Candidate(
                edits=[AddLine(text=f'else: respond "{_quoted(reference)}"', block=block)],
                rationale=f"{count} failing inputs match no rule; most of them need this reply.",
                proposer=self.name,
                kind="else",
                estimate=float(count),
            )
        ]

    def state_dict(self) -> dict[str, Any]:
        """Return the remembered inputs and references."""
        return {"memory": dict(self.memory)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.memory = {str(k): str(v) for k, v in dict(state.get("memory") or {}).items()}


class ProposerCoach(BasePolicy):
    """Greedy coach over any proposer: the best candidate not yet tried on the current version.

    Args:
        seed: seeds the policy's generator (and the proposer's).
        proposer: a proposer instance, or a proposer name / ``module:Class``
            (default ``output_rules``).
        candidates: candidates asked for per step.
        **proposer_options: keyword arguments for a proposer built by name.
    """

    name = "proposer_coach"

    def __init__(
        self,
        seed: int | None = None,
        *,
        proposer: Any = "output_rules",
        candidates: int = 6,
        **proposer_options: Any,
    ) -> None:
        super().__init__(seed)
        if isinstance(proposer, str):
            proposer = make_proposer(proposer, seed=seed, kwargs=proposer_options)
        self.proposer = proposer
        self.candidates = candidates
        self.tried: dict[str, list[str]] = {}

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return the best untried candidate for the current version (a no-op when none)."""
        version = str(observation.get("version", ""))
        tried = self.tried.setdefault(version, [])
        for candidate in self.proposer.propose(observation, info, self.candidates):
            if candidate.key() not in tried:
                tried.append(candidate.key())
                return candidate.to_action()
        return no_change_candidate(self.proposer.name, "Every candidate was tried.").to_action()

    def update(self, transition: Transition) -> None:
        """Remember what the step showed (the proposer learns from the new examples)."""
        remember = getattr(self.proposer, "remember", None)
        if remember is not None:
            remember(transition.info)

    def state_dict(self) -> dict[str, Any]:
        """Return the tried candidates per version and the proposer's memory."""
        proposer_state = getattr(self.proposer, "state_dict", None)
        return {
            **super().state_dict(),
            "tried": self.tried,
            "proposer": proposer_state() if proposer_state is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        super().load_state_dict(state)
        self.tried = {str(k): list(v) for k, v in dict(state.get("tried") or {}).items()}
        loader = getattr(self.proposer, "load_state_dict", None)
        if loader is not None and state.get("proposer"):
            loader(state["proposer"])
