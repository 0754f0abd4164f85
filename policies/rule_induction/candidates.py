"""Which changes could help? Candidate edits built from memory, each with a potential.

Every candidate is a whole, coherent change in plain language (see :mod:`.phrasing`) or a
change to the few-shot demonstrations (see :mod:`.demos`), with a **potential**: the share of
the observed answers it could fix (the errors of the reply it targets, or of all replies for a
structural change). Potentials say where the errors are, not how the target will react; the
coach multiplies them by what the env's rewards taught it about each kind of change.

Kinds (a priori weight in :data:`KIND_WEIGHTS`):

``scaffold:demos`` / ``scaffold`` / ``scaffold:list`` / ``scaffold:nolist``
    From a block without rules: a rule per reply (its description from :mod:`.terms`), the
    reply described worst as the default; ``scaffold`` as configured (``reply_list``), the
    other kind with the reply list toggled; ``scaffold:demos`` the configured scaffold with
    ``scaffold_demos`` typical demonstrations per reply, interleaved by reply (rules and
    demonstrations together did best on a real model).
``rule:add`` / ``rule:refresh``
    A rule for a reply that has none, or a rule re-described from a larger memory.
``rule:last``
    The rule of the reply the target gives most often to inputs it does not fit moves to the
    end (small models lean towards what they read first).
``default:move``
    The default goes to the reply with the most errors; the old default gets a rule.
``list:add`` / ``list:drop``
    The reply list on or off.
``drop:foreign``
    Delete a line the coach did not write (vague guidance can distract a model).
``demos:round``
    One more demonstration for every reply (typical and diverse), interleaved by reply.
``demo:add`` / ``demo:swap``
    A demonstration for the reply with the most errors: its most typical wrongly answered
    input, added, or swapped for that reply's least typical demonstration.
``demos:free``
    For free-form tasks (no routing): demonstrations of typical inputs with their references.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from policies.proposers import Candidate, estimate_tokens
from policies.rule_induction.config import RuleInductionConfig
from policies.rule_induction.demos import Encoder, pick_diverse
from policies.rule_induction.memory import Memory, reply_key
from policies.rule_induction.phrasing import Plan, join_terms, read_plan
from policies.rule_induction.terms import Description, TermStats, describe
from selfimprove_rl.prompt import AddDemo, Edit, ReplaceBlock, SwapDemo

KIND_WEIGHTS: dict[str, float] = {
    "scaffold:demos": 3.5,
    "scaffold": 3.0,
    "scaffold:list": 2.0,
    "scaffold:nolist": 2.0,
    "demos:round": 1.5,
    "demos:free": 1.5,
    "rule:add": 1.2,
    "rule:refresh": 1.0,
    "demo:add": 0.9,
    "demo:swap": 0.8,
    "rule:last": 1.0,
    "default:move": 0.6,
    "list:add": 0.5,
    "list:drop": 0.5,
    "drop:foreign": 0.4,
}


@dataclass(frozen=True)
class Situation:
    """What the builder reads, computed once per decision."""

    block: str
    plan: Plan
    demos: tuple[tuple[str, str], ...]
    classes: dict[str, list[str]]
    descriptions: dict[str, Description]
    errors: dict[str, int]
    observed: int
    default: str | None

    @property
    def total_error(self) -> float:
        """The share of observed answers that were wrong."""
        return sum(self.errors.values()) / self.observed if self.observed else 1.0

    def error_share(self, reply: str) -> float:
        """The share of observed answers that were wrong inputs of ``reply``."""
        return self.errors.get(reply, 0) / self.observed if self.observed else 1.0


def editable_block(observation: Mapping[str, Any], configured: str | None) -> str:
    """Return the block the coach writes: the configured one, ``sop``, or the last block."""
    names = list(dict(observation.get("blocks") or {}))
    if configured:
        return configured
    return "sop" if "sop" in names or not names else names[-1]


def read_situation(
    observation: Mapping[str, Any], memory: Memory, config: RuleInductionConfig
) -> Situation:
    """Read the block's plan, the demos, the replies and where the errors are."""
    block = editable_block(observation, config.block)
    text = str(dict(observation.get("blocks") or {}).get(block) or "")
    plan = read_plan(text.split("\n") if text else [])
    demos = tuple((str(i), str(o)) for i, o in observation.get("demos") or ())
    classes = memory.classes(config.min_support)
    if len(classes) > config.max_classes:
        classes = {}
    stats = TermStats(
        min_df=config.min_df,
        alpha=config.alpha,
        z_min=config.z_min,
        min_precision=config.min_precision,
        max_terms=config.max_terms,
    )
    ids = list(memory.samples)
    texts = [memory.samples[i][0] for i in ids]
    labels = [reply_key(memory.samples[i][1]) for i in ids]
    descriptions = {reply: describe(texts, labels, reply, stats) for reply in classes}
    errors = {reply: len(memory.errors(members)) for reply, members in classes.items()}
    if not classes:
        errors = {"": len(memory.errors(ids))}
    default = None
    if len(classes) >= 2:
        default = min(
            classes,
            key=lambda r: (descriptions[r].coverage, -len(classes[r]), r),
        )
    return Situation(
        block, plan, demos, classes, descriptions, errors, len(memory.observed), default
    )


@dataclass
class CandidateBuilder:
    """Builds every candidate for one decision (see the module docstring)."""

    proposer: str
    config: RuleInductionConfig
    memory: Memory
    situation: Situation
    encode: Encoder
    base: str

    def all(self) -> list[Candidate]:
        """Return every candidate that changes the prompt, unranked."""
        found = [*self._plan_candidates(), *self._demo_candidates()]
        return [c for c in found if c is not None]

    # ------------------------------------------------------------------ the block
    def _description(self, reply: str) -> str:
        return join_terms(self.situation.descriptions[reply].terms)

    def _replace(self, plan: Plan, kind: str, potential: float, why: str) -> Candidate | None:
        s = self.situation
        lines = plan.lines()
        if lines == s.plan.lines() or not any(line.strip() for line in lines):
            return None
        edit = ReplaceBlock(lines=tuple(lines), block=s.block)
        added = sum(estimate_tokens(line) for line in lines) - sum(
            estimate_tokens(line) for line in s.plan.lines()
        )
        return self._candidate([edit], kind, potential, why, added)

    def _scaffold(self, with_list: bool) -> Plan:
        s = self.situation
        rules = tuple(
            (self._description(reply), reply)
            for reply in s.classes
            if reply != s.default and s.descriptions[reply].terms
        )
        plan = replace(s.plan, rules=rules, default=s.default)
        return plan.with_list(with_list)

    def _plan_candidates(self) -> list[Candidate | None]:
        s = self.situation
        if len(s.classes) < 2:
            return []
        out: list[Candidate | None] = []
        total = s.total_error
        if not s.plan.rules and s.plan.default is None:
            out.append(self._scaffold_with_demos())
            out.append(
                self._replace(
                    self._scaffold(self.config.reply_list),
                    "scaffold",
                    total,
                    "A plain rule per reply, the least describable reply as the default.",
                )
            )
            out.append(
                self._replace(
                    self._scaffold(not self.config.reply_list),
                    "scaffold:nolist" if self.config.reply_list else "scaffold:list",
                    total,
                    "The same rules with the reply list toggled.",
                )
            )
            return out
        has_list = bool(s.plan.reply_list)
        for reply in s.classes:
            description = self._description(reply)
            if not description or reply == s.plan.default:
                continue
            current = s.plan.rule_for(reply)
            if current is None:
                rules = (*s.plan.rules, (description, reply))
                kind, why = "rule:add", "A rule for a reply that has none."
            elif current != description:
                rules = tuple((description if r == reply else d, r) for d, r in s.plan.rules)
                kind, why = "rule:refresh", "The rule re-described from a larger memory."
            else:
                continue
            share = s.error_share(reply) + len(self.memory.answered_with(reply)) / max(
                1, s.observed
            )
            plan = replace(s.plan, rules=rules).with_list(has_list)
            out.append(self._replace(plan, kind, share, why))
        worst = max(s.classes, key=lambda r: (s.errors.get(r, 0), r))
        if s.plan.default is not None and worst != s.plan.default and s.errors.get(worst, 0):
            old = s.plan.default
            rules = tuple((d, r) for d, r in s.plan.rules if r != worst)
            if self._description(old) and s.plan.rule_for(old) is None:
                rules = (*rules, (self._description(old), old))
            plan = replace(s.plan, rules=rules, default=worst).with_list(has_list)
            out.append(
                self._replace(
                    plan,
                    "default:move",
                    s.error_share(worst),
                    "The default goes to the reply with the most errors.",
                )
            )
        out.append(self._rule_last())
        outside = sum(
            1 for seen in self.memory.observed.values() if reply_key(seen.output) not in s.classes
        ) / max(1, s.observed)
        if has_list:
            out.append(
                self._replace(
                    s.plan.with_list(False), "list:drop", 0.2 * total, "Rules without the list."
                )
            )
        else:
            out.append(
                self._replace(
                    s.plan.with_list(True),
                    "list:add",
                    outside + 0.2 * total,
                    "Answers outside the known replies: list them.",
                )
            )
        for index in range(len(s.plan.foreign)):
            foreign = s.plan.foreign[:index] + s.plan.foreign[index + 1 :]
            out.append(
                self._replace(
                    replace(s.plan, foreign=foreign),
                    "drop:foreign",
                    0.3 * total,
                    f"Drop a line the coach did not write: {s.plan.foreign[index][:60]!r}.",
                )
            )
        return out

    def _scaffold_with_demos(self) -> Candidate | None:
        """The configured scaffold plus typical demonstrations of every reply, in rounds."""
        s = self.situation
        per_reply = min(self.config.scaffold_demos, self.config.max_demos_per_reply)
        room = self.config.max_demos - len(s.demos)
        scaffold = self._replace(self._scaffold(self.config.reply_list), "scaffold:demos", 0, "")
        if per_reply <= 0 or room <= 0 or scaffold is None:
            return None
        shown = {i for i, _ in s.demos}
        picked: dict[str, list[str]] = {}
        for reply in sorted(s.classes, key=lambda r: (-len(s.classes[r]), r)):
            ids, vectors = self._class_inputs(reply)
            texts = [self.memory.samples[i][0] for i in ids]
            allowed = [index for index, text in enumerate(texts) if text not in shown]
            rows = pick_diverse(
                vectors, per_reply, diversity=self.config.diversity, allowed=allowed
            )
            picked[reply] = [texts[row] for row in rows]
        demos = [
            AddDemo(input=inputs[round_], output=reply)
            for round_ in range(per_reply)
            for reply, inputs in picked.items()
            if round_ < len(inputs)
        ][:room]
        if not demos:
            return None
        edits: list[Edit] = [*scaffold.edits, *demos]
        return self._candidate(
            edits,
            "scaffold:demos",
            s.total_error,
            "A plain rule per reply and typical demonstrations of every reply, together.",
            scaffold.prompt_tokens
            + sum(estimate_tokens(e.input) + estimate_tokens(e.output) for e in demos),
        )

    def _rule_last(self) -> Candidate | None:
        """Move the rule of the reply the target gives most often wrongly to the end.

        Small models lean towards what they read first (a reply listed or ruled first is
        given to inputs it does not fit); moving that reply last is measured like any change.
        """
        s = self.situation
        over = max(s.classes, key=lambda r: (len(self.memory.answered_with(r)), r))
        wrongly = len(self.memory.answered_with(over))
        if not wrongly or s.plan.rule_for(over) is None or s.plan.rules[-1][1] == over:
            return None
        rules = tuple(r for r in s.plan.rules if r[1] != over) + tuple(
            r for r in s.plan.rules if r[1] == over
        )
        plan = replace(s.plan, rules=rules).with_list(bool(s.plan.reply_list))
        return self._replace(
            plan,
            "rule:last",
            wrongly / max(1, s.observed),
            "The reply given most often to inputs it does not fit goes last.",
        )

    # ------------------------------------------------------------------ the demos
    def _class_inputs(self, reply: str) -> tuple[list[str], np.ndarray]:
        ids = self.situation.classes[reply]
        texts = [self.memory.samples[i][0] for i in ids]
        return ids, self.encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)

    def _demo_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, output in self.situation.demos:
            counts[reply_key(output)] = counts.get(reply_key(output), 0) + 1
        return counts

    def _demo_candidates(self) -> list[Candidate | None]:
        s = self.situation
        room = self.config.max_demos - len(s.demos)
        if self.config.max_demos_per_reply == 0 or self.config.max_demos == 0:
            return []
        if not s.classes:
            return [self._free_demos(room)]
        counts = self._demo_counts()
        shown = {i for i, _ in s.demos}
        out: list[Candidate | None] = []
        order = sorted(s.classes, key=lambda r: (-len(s.classes[r]), r))
        round_edits: list[AddDemo] = []
        for reply in order:
            if counts.get(reply, 0) >= self.config.max_demos_per_reply or len(round_edits) >= room:
                continue
            pick = self._pick(reply, shown, wrong_only=False)
            if pick is not None:
                round_edits.append(AddDemo(input=pick, output=reply))
        if round_edits:
            rounds = min(counts.values(), default=0) if counts else 0
            out.append(
                self._candidate(
                    round_edits,
                    "demos:round",
                    s.total_error / (1.0 + rounds),
                    "One more typical, different demonstration for every reply.",
                    sum(estimate_tokens(e.input) + estimate_tokens(e.output) for e in round_edits),
                )
            )
        worst = max(s.classes, key=lambda r: (s.errors.get(r, 0), r))
        if s.errors.get(worst, 0):
            hard = self._pick(worst, shown, wrong_only=True)
            if hard is not None:
                share = s.error_share(worst)
                if counts.get(worst, 0) < self.config.max_demos_per_reply and room > 0:
                    out.append(
                        self._candidate(
                            [AddDemo(input=hard, output=worst)],
                            "demo:add",
                            share,
                            "A wrongly answered input of the reply with most errors, as a demo.",
                            estimate_tokens(hard) + estimate_tokens(worst),
                        )
                    )
                swap = self._least_typical_demo(worst)
                if swap is not None:
                    out.append(
                        self._candidate(
                            [SwapDemo(index=swap + 1, input=hard, output=worst)],
                            "demo:swap",
                            share,
                            "Swap the reply's least typical demo for a wrongly answered input.",
                            estimate_tokens(hard) - estimate_tokens(s.demos[swap][0]),
                        )
                    )
        return out

    def _pick(self, reply: str, shown: set[str], *, wrong_only: bool) -> str | None:
        ids, vectors = self._class_inputs(reply)
        texts = [self.memory.samples[i][0] for i in ids]
        wrong = set(self.memory.errors(ids))
        allowed = [
            index
            for index, sample_id in enumerate(ids)
            if texts[index] not in shown and (not wrong_only or sample_id in wrong)
        ]
        if not allowed:
            return None
        chosen_texts = [i for i, o in self.situation.demos if reply_key(o) == reply]
        chosen = self.encode(chosen_texts) if chosen_texts else None
        diversity = self.config.diversity
        picks = pick_diverse(vectors, 1, chosen=chosen, diversity=diversity, allowed=allowed)
        return texts[picks[0]] if picks else None

    def _least_typical_demo(self, reply: str) -> int | None:
        positions = [
            index for index, (_, o) in enumerate(self.situation.demos) if reply_key(o) == reply
        ]
        if len(positions) == 0:
            return None
        _, vectors = self._class_inputs(reply)
        demo_vectors = self.encode([self.situation.demos[i][0] for i in positions])
        if len(vectors) == 0:
            return positions[0]
        centre = vectors.mean(axis=0)
        scores = demo_vectors @ (centre / max(float(np.linalg.norm(centre)), 1e-9))
        return positions[int(np.argmin(scores))]

    def _free_demos(self, room: int) -> Candidate | None:
        if room <= 0 or not self.memory.samples:
            return None
        shown = {i for i, _ in self.situation.demos}
        ids = [i for i in self.memory.samples if self.memory.samples[i][0] not in shown]
        if not ids:
            return None
        texts = [self.memory.samples[i][0] for i in ids]
        vectors = self.encode(texts)
        chosen_texts = [i for i, _ in self.situation.demos]
        chosen = self.encode(chosen_texts) if chosen_texts else None
        picks = pick_diverse(vectors, min(2, room), chosen=chosen, diversity=self.config.diversity)
        edits = [AddDemo(input=texts[p], output=self.memory.samples[ids[p]][1]) for p in picks]
        return self._candidate(
            edits,
            "demos:free",
            self.situation.total_error / (1.0 + len(self.situation.demos) / 2),
            "Typical, different inputs with their references as demonstrations.",
            sum(estimate_tokens(e.input) + estimate_tokens(e.output) for e in edits),
        )

    # ------------------------------------------------------------------ shared
    def _candidate(
        self, edits: Sequence[Edit], kind: str, potential: float, why: str, tokens: int
    ) -> Candidate:
        payload = json.dumps(
            [e.model_dump(mode="json") for e in edits], sort_keys=True, ensure_ascii=False
        )
        signature = hashlib.sha1(f"{kind}|{payload}".encode("utf-8", "surrogatepass")).hexdigest()
        return Candidate(
            edits=list(edits),
            rationale=why,
            prompt_tokens=int(tokens),
            proposer=self.proposer,
            kind=kind,
            estimate=float(potential),
            meta={"signature": signature[:16], "base": self.base, "potential": float(potential)},
        )
