"""RuleInductionCoach: an offline coach that writes routing rules from the examples it has seen.

No LLM is involved. The coach remembers every ``(input, reference)`` pair the env shows it
(``info["examples"]``, the current version's rows on each minibatch, worst first), treats each
distinct reference reply as a class, and edits the SOP block in the simulated model's grammar
(:mod:`selfimprove_rl.simulated.sop`), one change per step (the candidates are built in
:mod:`policies.rule_edits`):

* **ADD** a rule for any class, of two kinds (see :mod:`policies.induction`): literal terms
  (``if input mentions ...``) or a plain-language description built from the terms that
  separate the class (``if input is about ...``), after the block's last rule (a catch-all)
  or before its first rule (a precise rule that answers before the others do); so rule kinds
  combine instead of replacing each other;
* **ADD** representative examples (``example: "..." -> "..."``, k-means medoids, every class
  at once, with an ``else`` line when the block has none), or **re-pick** all examples from
  the larger memory;
* **EDIT** a rule into a better one: extended with more terms, re-induced from a larger
  memory, or of the other kind;
* **ADD/EDIT** the ``else:`` fallback, given to the class the rules describe worst (the lowest
  estimated recall of its best rule); when the fallback should move to another class, one
  compound step adds a rule for the old fallback class and re-points the ``else``;
* **DEL** a statement whose removal makes the prompt more accurate.

**The statistic.** Every candidate gets an estimated gain: the remembered inputs the edited
prompt answers correctly on *held-out folds* (the rule is induced on the other folds;
:func:`policies.induction.cross_validated_correct`) are paired with those the current prompt
answers, and the gain is the paired (McNemar) difference less ``confidence`` standard errors,
``(fixed - broken - confidence * sqrt(fixed + broken)) / n``
(:func:`policies.induction.paired_gain`), minus ``token_weight`` per added prompt token.
Answers are predicted by the surrogate of :mod:`policies.surrogate`, using the same sentence
embedder as the simulated model and thresholds fitted to what the target actually did; an
example never answers its own input (leave-one-out), in the current prompt as in a candidate.
Candidates are ranked by that estimate times a kind weight learned from the env's rewards,
``2 (accepted + 1) / (tried + 2)`` per kind (1 before any evidence); only estimates above
``min_gain`` are proposed.

**Exploring.** A no-op step teaches the coach nothing (the env replays nothing for it), while
a tried edit brings the current version's outputs on a fresh minibatch into memory. So when no
estimate clears ``min_gain``, the coach explores: among the candidates whose *point* estimate
(the paired difference without the confidence margin) is above ``-explore_margin``, whose
prompt was never tried and which are predicted to change at least one answer (an edit that
only saves tokens cannot win a reward), it tries the one with the best *upper* bound (the
paired difference plus ``confidence`` standard errors: optimism in the face of
uncertainty, so a change with much at stake is tried before a near-certain no-op); only
when nothing qualifies does it answer ``no_change``. The env accepts an edit only if it
beats the current version on the minibatch and the runner promotes only on a test-split
gain, so an exploratory edit costs calls, not quality.

**Learning from reward.** Each tried candidate enters a change log with its reward. A change
the env did not accept is banned on that base version (with every candidate of the same
operation, kind and class) until ``retry_after`` new inputs have been remembered, so the coach
moves on to the next kind rather than repeating it, and may come back to it once a larger
memory re-induces it; its per-sample scores also refine the surrogate's thresholds (a model
that ignores ``is about`` rules teaches the coach to stop writing them). The current version's
outputs refit both thresholds and how many leading statements the target reads (a small model
that reads only the first lines teaches the coach that later lines are out of reach).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.base import BasePolicy, Observation, Transition
from policies.induction import InductionConfig, Pool, parsed
from policies.proposers import Candidate, no_change_candidate
from policies.rule_edits import CandidateBuilder, SopLayout
from policies.surrogate import Inputs, Surrogate, reply_key


class RuleInductionConfig(BaseModel):
    """Options of the rule-induction coach (the statistic's knobs: see ``policies.induction``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    block: str | None = Field(
        default=None, description="Block to edit (default: sop, else the last)."
    )
    kinds: tuple[Literal["mentions", "about", "examples"], ...] = Field(
        default=("mentions", "about", "examples"), description="Rule kinds it may write."
    )
    min_support: int = Field(default=2, ge=1, description="Inputs a reply needs to get rules.")
    min_df: int = Field(default=2, ge=1, description="Inputs of the class a term must occur in.")
    alpha: float = Field(default=0.5, gt=0, description="Prior of the smoothed log-odds.")
    z_min: float = Field(default=1.0, description="Minimum log-odds z-score of a term.")
    min_precision: float = Field(default=0.7, ge=0, le=1, description="Minimum term precision.")
    max_terms: int = Field(default=8, ge=1, description="Terms per 'mentions' rule.")
    max_facets: int = Field(default=6, ge=1, description="Facets per 'is about' rule.")
    max_examples: int = Field(default=5, ge=1, description="Examples per class and step.")
    min_gain_samples: int = Field(default=2, ge=1, description="Inputs a term must newly fix.")
    folds: int = Field(default=3, ge=1, description="Cross-validation folds (1: in-sample).")
    token_weight: float = Field(default=2e-5, ge=0, description="Accuracy one prompt token costs.")
    confidence: float = Field(
        default=0.5, ge=0, description="Standard errors the paired gain estimate is lowered by."
    )
    min_gain: float = Field(default=0.01, description="Smallest estimated gain worth a step.")
    retry_after: int = Field(
        default=16,
        ge=1,
        description="New remembered inputs after which a change rejected on a base may be "
        "proposed on it again (re-induced from the larger memory).",
    )
    explore_margin: float | None = Field(
        default=0.02,
        ge=0,
        description="With nothing above min_gain, try the untried prompt with the best point "
        "estimate if above -margin (a no-op teaches nothing; None: never explore).",
    )
    semantic_prior: float = Field(default=0.25, description="Prior 'is about' cosine threshold.")
    example_prior: float = Field(default=0.2, description="Prior example cosine threshold.")
    correct_at: float = Field(default=0.99, description="Sample score that counts as correct.")
    max_memory: int = Field(default=1000, ge=8, description="Remembered (input, reference) pairs.")

    def induction(self) -> InductionConfig:
        """Return the statistic's knobs."""
        return InductionConfig(
            min_df=self.min_df,
            alpha=self.alpha,
            z_min=self.z_min,
            min_precision=self.min_precision,
            max_terms=self.max_terms,
            max_facets=self.max_facets,
            max_examples=self.max_examples,
            min_gain_samples=self.min_gain_samples,
            token_weight=self.token_weight,
            folds=self.folds,
            confidence=self.confidence,
        )


class RuleInductionProposer:
    """Proposes routing-rule edits induced from remembered examples (see the module doc).

    Args:
        config: options (a model or a plain dict).
        embedder: sentence embedder (default: :func:`selfimprove_rl.embeddings.default_embedder`).
        **options: :class:`RuleInductionConfig` fields, merged over ``config``.
    """

    name = "rule_induction"

    def __init__(
        self,
        config: RuleInductionConfig | Mapping[str, Any] | None = None,
        *,
        embedder: Any = None,
        **options: Any,
    ) -> None:
        base = (
            config.model_dump() if isinstance(config, RuleInductionConfig) else dict(config or {})
        )
        self.config = RuleInductionConfig.model_validate({**base, **options})
        self._embedder = embedder
        self.surrogate = Surrogate(self, self.config.semantic_prior, self.config.example_prior)
        self.memory: dict[str, tuple[str, str]] = {}
        self.replies: dict[str, str] = {}
        self.seen: dict[str, None] = {}
        self.stats: dict[str, list[int]] = {}
        self.banned: dict[str, int] = {}
        self.remembered = 0
        self.tried: dict[str, int] = {}
        self.skipped: dict[str, int] = {}

    # ------------------------------------------------------------------ memory
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the configured (or default) embedder."""
        if self._embedder is None:
            from selfimprove_rl.embeddings import default_embedder

            self._embedder = default_embedder()
        return np.asarray(self._embedder.encode(list(texts)), dtype=np.float32)

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def remember(self, observation: Observation, info: Mapping[str, Any]) -> None:
        """Add the rows of ``info["examples"]`` to memory and fit thresholds to their outputs."""
        rows = [r for r in info.get("examples") or () if isinstance(r, Mapping)]
        version = str(info.get("current_version_id") or observation.get("version") or "")
        fresh: list[tuple[str, str, str, str | None, bool]] = []
        for row in rows:
            sample_id, text, reference = (
                row.get("sample_id"),
                row.get("input"),
                row.get("reference"),
            )
            if not isinstance(sample_id, str) or not isinstance(text, str) or not text.strip():
                self._skip("row_without_input")
                continue
            if not isinstance(reference, str) or not reference.strip():
                self._skip("row_without_reference")
                continue
            if self.memory.pop(sample_id, None) is None:
                self.remembered += 1
            self.memory[sample_id] = (text, reference)
            self.replies.setdefault(reply_key(reference), reference.strip())
            evidence = f"{version}:{sample_id}"
            if evidence not in self.seen and not row.get("failed"):
                self.seen[evidence] = None
                output = row.get("output") if isinstance(row.get("output"), str) else None
                fresh.append(
                    (
                        sample_id,
                        text,
                        reference,
                        output,
                        float(row.get("score", 0)) >= self.config.correct_at,
                    )
                )
        while len(self.memory) > self.config.max_memory:
            self.memory.pop(next(iter(self.memory)))
        while len(self.seen) > 2000:
            self.seen.pop(next(iter(self.seen)))
        if fresh:
            layout = SopLayout(observation, self.config.block)
            self._observe(layout.all_lines, fresh)

    def _observe(
        self, lines: Sequence[str], rows: Sequence[tuple[str, str, str, str | None, bool]]
    ) -> None:
        statements = parsed(lines)
        known = [r for r in rows if r[3] is not None]
        if len(statements) > 1 and known:
            self.surrogate.record(lines, [r[1] for r in known], [str(r[3]) for r in known])
        if not any(s.kind in ("about", "example") for s in statements):
            return
        texts = [r[1] for r in rows]
        inputs = Inputs(texts, self.encode(texts), [reply_key(r[2]) for r in rows])
        self.surrogate.observe(statements, inputs, [r[3] for r in rows], [r[4] for r in rows])

    def classes(self) -> dict[str, str]:
        """Return the reply key → reply text of every class with enough support."""
        counts: dict[str, int] = {}
        for _, reference in self.memory.values():
            key = reply_key(reference)
            counts[key] = counts.get(key, 0) + 1
        result: dict[str, str] = {}
        for key, count in counts.items():
            reply = self.replies.get(key, "")
            if count < self.config.min_support or not key:
                continue
            if "\n" in reply:
                self._skip("multiline_reply")
                continue
            result[key] = reply
        return result

    # ------------------------------------------------------------------ proposing
    def _is_banned(self, key: str) -> bool:
        """Whether a change was rejected on a base with no new inputs remembered since."""
        at = self.banned.get(key)
        return at is not None and self.remembered < at + self.config.retry_after

    def _weight(self, kind: str) -> float:
        accepted, tried = self.stats.get(kind, [0, 0])
        return 2.0 * (accepted + 1) / (tried + 2)

    def propose(self, observation: Observation, info: Mapping[str, Any], k: int) -> list[Candidate]:
        """Return up to ``k`` candidates ranked by weighted estimated gain (see the module doc).

        An empty list means nothing is estimated to help (or memory is empty).
        """
        self.remember(observation, info)
        classes = self.classes()
        if not classes or k <= 0:
            return []
        ids = list(self.memory)
        pool = Pool.build(
            self.surrogate,
            ids,
            [self.memory[i][0] for i in ids],
            [self.memory[i][1] for i in ids],
            self.config.induction(),
        )
        layout = SopLayout(observation, self.config.block)
        base = str(info.get("current_version_id") or observation.get("version") or "")
        current = pool.correct(layout.statements(), np.arange(pool.n))
        builder = CandidateBuilder(
            self.name,
            self.config.induction(),
            self.config.kinds,
            pool,
            layout,
            classes,
            current,
            base,
        )
        candidates = builder.all()
        allowed = [c for c in candidates if not self._is_banned(f"{base}|{c.meta['signature']}")]
        ranked = sorted(
            (c for c in allowed if (c.estimate or 0.0) > self.config.min_gain),
            key=lambda c: (-(c.estimate or 0.0) * self._weight(c.kind), c.prompt_tokens, c.key()),
        )
        if not ranked and self.config.explore_margin is not None:
            floor = -self.config.explore_margin
            ranked = sorted(
                (
                    c.model_copy(update={"meta": {**c.meta, "explore": True}})
                    for c in allowed
                    if c.meta["point"] > floor
                    and c.meta["changes"] > 0
                    and _prompt_key(c) not in self.tried
                ),
                key=lambda c: (-c.meta["upper"], c.prompt_tokens, c.key()),
            )
        chosen: list[Candidate] = []
        for candidate in ranked:
            if any(c.directive_text() == candidate.directive_text() for c in chosen):
                continue
            chosen.append(candidate)
            if len(chosen) >= k:
                break
        return chosen

    def feedback(
        self, candidate: Candidate, reward: float, accepted: bool, info: Mapping[str, Any]
    ) -> None:
        """Learn from the env's verdict on a candidate this proposer made."""
        if candidate.proposer != self.name or "signature" not in candidate.meta:
            return
        accepted_count, tried = self.stats.get(candidate.kind, [0, 0])
        self.stats[candidate.kind] = [accepted_count + int(accepted), tried + 1]
        prompt = _prompt_key(candidate)
        self.tried[prompt] = self.tried.get(prompt, 0) + 1
        if accepted:
            return
        self.banned[f"{candidate.meta['base']}|{candidate.meta['signature']}"] = self.remembered
        if info.get("invalid_edit"):
            return
        scores = info.get("sample_scores") or {}
        rows = [
            (sid, *self.memory[sid], None, float(score) >= self.config.correct_at)
            for sid, score in scores.items()
            if sid in self.memory
        ]
        if rows:
            self._observe(list(candidate.meta.get("lines") or ()), rows)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Return memory, evidence, kind statistics and bans (JSON-serialisable)."""
        return {
            "memory": [[sid, text, ref] for sid, (text, ref) in self.memory.items()],
            "replies": dict(self.replies),
            "seen": list(self.seen),
            "stats": {kind: list(v) for kind, v in self.stats.items()},
            "banned": dict(self.banned),
            "remembered": self.remembered,
            "tried": dict(self.tried),
            "skipped": dict(self.skipped),
            "surrogate": self.surrogate.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.memory = {sid: (text, ref) for sid, text, ref in state["memory"]}
        self.replies = dict(state["replies"])
        self.seen = dict.fromkeys(state["seen"])
        self.stats = {kind: [int(a), int(b)] for kind, (a, b) in state["stats"].items()}
        self.remembered = int(state.get("remembered", len(self.memory)))
        banned = state["banned"]
        if isinstance(banned, list):  # an older state: its bans count from now
            banned = dict.fromkeys(banned, self.remembered)
        self.banned = {k: int(v) for k, v in banned.items()}
        self.tried = {k: int(v) for k, v in state.get("tried", {}).items()}
        self.skipped = {k: int(v) for k, v in state.get("skipped", {}).items()}
        self.surrogate.load_state_dict(state["surrogate"])


def _prompt_key(candidate: Candidate) -> str:
    """Return a short digest of the prompt lines a candidate would produce."""
    text = "\n".join(str(line) for line in candidate.meta.get("lines") or ())
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _replayed(proposer: str, action: Any) -> Candidate:
    """Return a candidate standing for an action this policy has no record of."""
    edits = getattr(action, "edits", action)
    if not isinstance(edits, str | list):
        edits = [edits]
    return Candidate(edits=edits, proposer=proposer, kind="replayed")


class RuleInductionCoach(BasePolicy):
    """The offline coach: one induced rule edit per step, learning which kinds the target follows.

    Args:
        seed: the policy seed (the coach itself is deterministic given its memory).
        embedder: sentence embedder for the surrogate (default: the shipped MiniLM).
        **options: :class:`RuleInductionConfig` fields.

    Example:
        >>> coach = RuleInductionCoach(seed=0, folds=2)
        >>> coach.config.folds
        2
    """

    name = "rule_induction"

    def __init__(self, seed: int | None = None, *, embedder: Any = None, **options: Any) -> None:
        super().__init__(seed)
        self.config = RuleInductionConfig.model_validate(options)
        self.proposer = RuleInductionProposer(self.config, embedder=embedder)
        self.change_log: list[dict[str, Any]] = []
        self._pending: Candidate | None = None

    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Remember the start version's examples."""
        self.proposer.remember(observation, info)
        self._pending = None

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Return the best-ranked candidate as an env action, or ``no_change``."""
        base = str(info.get("current_version_id") or observation.get("version") or "") or None
        proposals = self.proposer.propose(observation, info, k=1)
        candidate = (
            proposals[0]
            if proposals
            else no_change_candidate(self.name, "No candidate is estimated to help.")
        )
        self._pending = candidate
        return candidate.to_action(base_version=base)

    def update(self, transition: Transition) -> None:
        """Log the tried change with its reward and let the proposer learn from it."""
        candidate, self._pending = self._pending, None
        info = transition.info
        if candidate is None:  # e.g. a resumed run replaying a step: log it, learn no bans
            candidate = _replayed(self.name, transition.action)
        accepted = bool(info.get("accepted"))
        self.change_log.append(
            {
                "step": info.get("step"),
                "base": candidate.meta.get("base"),
                "version": info.get("version_id"),
                "kind": candidate.kind,
                "directive": candidate.directive_text(),
                "estimate": candidate.estimate,
                "reward": float(transition.reward),
                "accepted": accepted,
            }
        )
        self.proposer.feedback(candidate, float(transition.reward), accepted, info)
        self.proposer.remember(transition.next_observation, info)

    def state_dict(self) -> dict[str, Any]:
        """Return the RNG state, the proposer's memory and the change log."""
        return {
            **super().state_dict(),
            "proposer": self.proposer.state_dict(),
            "change_log": [dict(entry) for entry in self.change_log],
            "pending": self._pending.model_dump(mode="json") if self._pending else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        super().load_state_dict(state)
        self.proposer.load_state_dict(state["proposer"])
        self.change_log = [dict(entry) for entry in state.get("change_log", [])]
        pending = state.get("pending")
        self._pending = Candidate.model_validate(pending) if pending else None
