"""Which prompt versions exist, and which one is live?

Every prompt version is a *build*: an id, its parent, the edits that made it, the prompt state
(blocks and model), its scores per split, the calls and tokens spent on it, and when it was
made. The registry is an append-only event log (JSONL, one fsynced line per event) so a run
killed half-way loses nothing and resumes from the file:

* ``version`` — a new build (deduplicated by fingerprint: the same prompt is one version);
* ``scores`` — a build scored on a split (``minibatch``, ``train``, ``test``, ``holdout``);
* ``decision`` — the promotion gate's verdict on a candidate;
* ``rollback`` — the live build moved back to an earlier promoted one.

The first build added is the baseline and is live from the start. A candidate becomes the
live build only through a gate decision: :meth:`Registry.gate` (``mode = "full_split"``: its
test score must beat the live build's by at least ``min_improvement``) or the sequential gate
of :mod:`selfimprove_rl.gate` (the default: the lower confidence bound of its paired test
gain must clear ``min_improvement``), recorded with :meth:`Registry.record_decision` along
with the samples it used, the bounds and the error level; in both, no single eval may regress
by more than ``max_eval_regression``. Holdout is scored only for the final report, never
consulted by the gate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from selfimprove_rl.errors import RegistryError
from selfimprove_rl.fileio import append_jsonl, read_jsonl
from selfimprove_rl.program_state import NodeEdit, ProgramState, program_directive
from selfimprove_rl.prompt import Edit, PromptState, to_directive

ScoreSplit = Literal["minibatch", "train", "test", "holdout"]
REGISTRY_SCHEMA_VERSION = 1


class SplitScore(BaseModel):
    """A build's score on one split: the weighted aggregate and each eval's mean."""

    model_config = ConfigDict(frozen=True)

    aggregate: float
    per_eval: dict[str, float]
    n: int = Field(ge=0, description="Samples scored.")
    failed: int = Field(default=0, ge=0, description="Samples whose replay failed (scored 0).")


StateT = TypeVar("StateT", bound=PromptState | ProgramState)


class Build(BaseModel, Generic[StateT]):
    """One prompt version and where it came from (a single call's or a program's state)."""

    model_config = ConfigDict(frozen=True)

    version_id: str
    parent_id: str | None
    edits: list[Edit] | list[NodeEdit] = Field(default_factory=list)
    state: StateT
    fingerprint: str
    origin: str = Field(default="", description="Who proposed it (policy name, 'baseline').")
    created_at: datetime

    @property
    def directive(self) -> str:
        """The edits as directive text (empty for the baseline)."""
        if isinstance(self.state, ProgramState):
            return program_directive([e for e in self.edits if isinstance(e, NodeEdit)])
        return "\n".join(
            to_directive(edit) for edit in self.edits if not isinstance(edit, NodeEdit)
        )


class BuildRecord(BaseModel):
    """A build with everything the log says about it: scores, spend, gate status."""

    model_config = ConfigDict(frozen=True)

    build: Build
    scores: dict[str, SplitScore] = Field(default_factory=dict)
    calls: int = 0
    tokens: int = 0
    status: Literal["baseline", "candidate", "promoted", "rejected"] = "candidate"


class GateConfig(BaseModel):
    """The promotion gate: its rule, thresholds and (sequential mode) error level.

    ``mode = "sequential"`` (the default) scores the candidate and the live build on paired
    test samples, a chunk at a time in a random order drawn per gate, and stops as soon as an
    anytime-valid confidence sequence for the mean paired gain decides (see
    :mod:`selfimprove_rl.sequential` and :mod:`selfimprove_rl.gate`). ``mode = "full_split"``
    is the former rule: both builds scored on the whole test split, promoted when the gain
    is at least ``min_improvement`` (no error control; kept for comparisons).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["sequential", "full_split"] = Field(
        default="sequential", description="Sequential paired test, or the whole split each time."
    )
    min_improvement: float = Field(
        default=0.01, ge=0.0, description="Test-score gain a candidate needs over the live build."
    )
    max_eval_regression: float = Field(
        default=0.02, ge=0.0, description="Largest drop any single eval may show on test."
    )
    alpha: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="Sequential mode: the chance of promoting a build not better by "
        "min_improvement, per live build (see alpha_spending).",
    )
    alpha_spending: Literal["per_live_build", "per_run", "none"] = Field(
        default="per_live_build",
        description="Sequential mode: how alpha is split over repeated gates on one test "
        "split: the k-th gate gets alpha*6/(pi^2 k^2), k counted since the live build was "
        "promoted ('per_live_build') or over the run ('per_run'); 'none': alpha each.",
    )
    chunk_size: int = Field(
        default=8, ge=1, description="Sequential mode: paired test samples scored per look."
    )


class GateDecision(BaseModel):
    """The gate's verdict and why."""

    model_config = ConfigDict(frozen=True)

    candidate_id: str
    baseline_id: str
    promoted: bool
    delta: float = Field(
        description="Mean paired test gain of the candidate: on the whole split (full_split "
        "mode) or on the samples the sequential gate scored."
    )
    regressions: dict[str, float] = Field(default_factory=dict)
    reason: str
    method: Literal["full_split", "sequential"] = "full_split"
    n: int | None = Field(default=None, description="Paired test samples the gate scored.")
    n_split: int | None = Field(default=None, description="Test samples available.")
    lower: float | None = Field(default=None, description="Lower confidence bound of the gain.")
    upper: float | None = Field(default=None, description="Upper confidence bound of the gain.")
    alpha: float | None = Field(default=None, description="Error level this gate ran at.")
    gate_index: int | None = Field(
        default=None, description="Which gate this was under the alpha-spending rule (1-based)."
    )
    candidate_score: float | None = Field(
        default=None, description="The candidate's mean test score on the gate's samples."
    )
    live_score: float | None = Field(
        default=None, description="The live build's mean test score on the gate's samples."
    )
    calls: int = Field(default=0, ge=0, description="Model calls the gate sent.")


def decide(
    candidate: SplitScore,
    baseline: SplitScore,
    config: GateConfig,
    *,
    candidate_id: str = "candidate",
    baseline_id: str = "baseline",
) -> GateDecision:
    """Apply the promotion rule to two test-split scores (pure; no I/O).

    Example:
        >>> old = SplitScore(aggregate=0.5, per_eval={"a": 0.5}, n=10)
        >>> new = SplitScore(aggregate=0.7, per_eval={"a": 0.7}, n=10)
        >>> decide(new, old, GateConfig()).promoted
        True
    """
    delta = candidate.aggregate - baseline.aggregate
    regressions = {
        name: baseline.per_eval[name] - score
        for name, score in candidate.per_eval.items()
        if name in baseline.per_eval
        and baseline.per_eval[name] - score > config.max_eval_regression
    }
    if regressions:
        worst = max(regressions, key=lambda name: regressions[name])
        reason = (
            f"eval {worst!r} regressed by {regressions[worst]:.4f} "
            f"(tolerance {config.max_eval_regression})"
        )
        return GateDecision(
            candidate_id=candidate_id,
            baseline_id=baseline_id,
            promoted=False,
            delta=delta,
            regressions=regressions,
            reason=reason,
        )
    if delta < config.min_improvement or delta <= 0:
        reason = f"test gain {delta:+.4f} is below the minimum {config.min_improvement}"
        return GateDecision(
            candidate_id=candidate_id,
            baseline_id=baseline_id,
            promoted=False,
            delta=delta,
            reason=reason,
        )
    return GateDecision(
        candidate_id=candidate_id,
        baseline_id=baseline_id,
        promoted=True,
        delta=delta,
        reason=f"test gain {delta:+.4f} >= {config.min_improvement}; no eval regressed",
    )


class Registry:
    """The versions of one optimization run, persisted as an append-only event log.

    Args:
        path: the JSONL log; ``None`` keeps everything in memory. An existing log is loaded,
            so constructing a registry on a run's ``versions.jsonl`` resumes it.
        clock: returns the current time (injected for reproducible tests).

    Attributes:
        events: how many events the log holds; a run saves it with each step, so a resumed
            run can cut off what an unfinished step wrote (see :func:`truncate_log`).
    """

    def __init__(self, path: str | Path | None = None, *, clock: Any = None) -> None:
        self.path = Path(path) if path else None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._records: dict[str, BuildRecord] = {}
        self._by_fingerprint: dict[str, str] = {}
        self._promoted: list[str] = []
        self._live: str | None = None
        self.decisions: list[GateDecision] = []
        self.events = 0
        if self.path is not None:
            for number, event in enumerate(read_jsonl(self.path), start=1):
                try:
                    self._apply(event)
                except (KeyError, ValueError) as exc:
                    raise RegistryError(f"{self.path}: event {number} is invalid: {exc}") from exc

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, version_id: object) -> bool:
        return version_id in self._records

    def __iter__(self) -> Iterator[BuildRecord]:
        return iter(list(self._records.values()))

    def _emit(self, event: dict[str, Any]) -> None:
        event = {
            "schema_version": REGISTRY_SCHEMA_VERSION,
            "at": self._clock().isoformat(),
            **event,
        }
        self._apply(event)
        if self.path is not None:
            append_jsonl(self.path, event)

    def _apply(self, event: dict[str, Any]) -> None:
        self._apply_event(event)
        self.events += 1

    def _apply_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "version":
            build: Build[Any] = Build.model_validate(event["build"])
            status = "baseline" if not self._records else "candidate"
            self._records[build.version_id] = BuildRecord(build=build, status=status)
            self._by_fingerprint.setdefault(build.fingerprint, build.version_id)
            if status == "baseline":
                self._promoted.append(build.version_id)
                self._live = build.version_id
        elif kind == "scores":
            record = self.record(event["version_id"])
            scores = dict(record.scores)
            scores[event["split"]] = SplitScore.model_validate(event["score"])
            self._records[record.build.version_id] = record.model_copy(
                update={
                    "scores": scores,
                    "calls": record.calls + int(event.get("calls", 0)),
                    "tokens": record.tokens + int(event.get("tokens", 0)),
                }
            )
        elif kind == "decision":
            decision = GateDecision.model_validate(event["decision"])
            self.decisions.append(decision)
            record = self.record(decision.candidate_id)
            if decision.promoted:
                self._promoted.append(decision.candidate_id)
                self._live = decision.candidate_id
                status = "promoted"
            else:
                status = "rejected" if record.status == "candidate" else record.status
            self._records[decision.candidate_id] = record.model_copy(update={"status": status})
        elif kind == "rollback":
            self.record(event["version_id"])
            self._live = event["version_id"]
        else:
            raise ValueError(f"unknown event {kind!r}")

    def record(self, version_id: str) -> BuildRecord:
        """Return everything known about a version.

        Raises:
            RegistryError: no such version.
        """
        try:
            return self._records[version_id]
        except KeyError:
            known = ", ".join(list(self._records)[-5:]) or "none yet"
            raise RegistryError(
                f"Unknown version {version_id!r}; latest versions: {known}"
            ) from None

    def build(self, version_id: str) -> Build:
        """Return the build of a version (see :meth:`record`)."""
        return self.record(version_id).build

    def find(self, state: PromptState | ProgramState) -> str | None:
        """Return the id of the version with this exact prompt state, if any."""
        return self._by_fingerprint.get(state.fingerprint())

    def add(
        self,
        state: PromptState | ProgramState,
        *,
        parent_id: str | None,
        edits: Sequence[Edit] | Sequence[NodeEdit] = (),
        origin: str = "",
    ) -> Build:
        """Register a prompt version, or return the existing one with the same fingerprint.

        The first version added becomes the live baseline.

        Raises:
            RegistryError: ``parent_id`` is unknown.
        """
        existing = self.find(state)
        if existing is not None:
            return self.build(existing)
        if parent_id is not None:
            self.record(parent_id)
        build: Build[Any] = Build(
            version_id=f"v{len(self._records):04d}",
            parent_id=parent_id,
            edits=list(edits),
            state=state,
            fingerprint=state.fingerprint(),
            origin=origin or ("baseline" if not self._records else ""),
            created_at=self._clock(),
        )
        self._emit({"event": "version", "build": build.model_dump(mode="json")})
        return build

    def record_scores(
        self,
        version_id: str,
        split: ScoreSplit,
        score: SplitScore,
        *,
        calls: int = 0,
        tokens: int = 0,
    ) -> None:
        """Record a version's score on a split and what scoring it cost."""
        self.record(version_id)
        self._emit(
            {
                "event": "scores",
                "version_id": version_id,
                "split": split,
                "score": score.model_dump(mode="json"),
                "calls": calls,
                "tokens": tokens,
            }
        )

    @property
    def live_id(self) -> str:
        """The id of the live (last promoted, or rolled-back-to) build.

        Raises:
            RegistryError: the registry is empty.
        """
        if self._live is None:
            raise RegistryError("The registry is empty; add the baseline version first.")
        return self._live

    @property
    def baseline_id(self) -> str:
        """The id of the first version (the prompt as logged)."""
        if not self._promoted:
            raise RegistryError("The registry is empty; add the baseline version first.")
        return self._promoted[0]

    @property
    def promoted_ids(self) -> list[str]:
        """Every promoted version in promotion order, baseline first."""
        return list(self._promoted)

    def best(self, split: ScoreSplit = "test") -> str | None:
        """Return the version with the highest aggregate score on ``split`` (ties: the oldest)."""
        scored = [
            (r.scores[split].aggregate, r.build.version_id) for r in self if split in r.scores
        ]
        if not scored:
            return None
        top = max(score for score, _ in scored)
        return next(version for score, version in scored if score == top)

    def gate(self, candidate_id: str, config: GateConfig) -> GateDecision:
        """Decide whether a candidate replaces the live build, and record the decision.

        Both the candidate and the live build must have test scores.

        Raises:
            RegistryError: a test score is missing, or the candidate is already live.
        """
        live = self.record(self.live_id)
        candidate = self.record(candidate_id)
        if candidate_id == live.build.version_id:
            raise RegistryError(f"Version {candidate_id} is already live; gate a new candidate.")
        for record in (candidate, live):
            if "test" not in record.scores:
                raise RegistryError(
                    f"Version {record.build.version_id} has no test score; score it on the test "
                    "split before gating."
                )
        decision = decide(
            candidate.scores["test"],
            live.scores["test"],
            config,
            candidate_id=candidate_id,
            baseline_id=live.build.version_id,
        )
        self._emit({"event": "decision", "decision": decision.model_dump(mode="json")})
        return decision

    def record_decision(self, decision: GateDecision) -> GateDecision:
        """Record a decision a gate reached outside :meth:`gate` (the sequential gate's).

        Raises:
            RegistryError: a version is unknown, the candidate is not a new candidate against
                the live build, or it was gated already.
        """
        candidate = self.record(decision.candidate_id)
        self.record(decision.baseline_id)
        if decision.baseline_id != self.live_id or decision.candidate_id == self.live_id:
            raise RegistryError(
                f"A decision must gate a candidate against the live build {self.live_id}; got "
                f"{decision.candidate_id} against {decision.baseline_id}."
            )
        if candidate.status != "candidate":
            raise RegistryError(
                f"Version {decision.candidate_id} is {candidate.status} already; gate a new "
                "candidate."
            )
        self._emit({"event": "decision", "decision": decision.model_dump(mode="json")})
        return decision

    def test_estimate(self, version_id: str) -> SplitScore | None:
        """The best-known test score of a version: the whole split's, else a gate's estimate.

        A sequential gate scores only some test samples; the estimate is the version's mean
        on the samples of the last gate it took part in (as candidate or live build), with
        ``n`` those samples. ``None`` when the version was never scored on test.
        """
        record = self.record(version_id)
        if "test" in record.scores:
            return record.scores["test"]
        for decision in reversed(self.decisions):
            if decision.method != "sequential" or not decision.n:
                continue
            if decision.candidate_id == version_id:
                score = decision.candidate_score
            elif decision.baseline_id == version_id:
                score = decision.live_score
            else:
                continue
            if score is not None:
                return SplitScore(aggregate=score, per_eval={}, n=decision.n)
        return None

    def gates_against(self, version_id: str) -> int:
        """How many candidates were gated against ``version_id`` while it was live."""
        return sum(1 for decision in self.decisions if decision.baseline_id == version_id)

    def rollback(self, to: str | None = None) -> str:
        """Make an earlier promoted build live again; returns its id.

        Args:
            to: a promoted version id; default: the one promoted before the live build.

        Raises:
            RegistryError: ``to`` was never promoted, or there is nothing to roll back to.
        """
        if to is None:
            position = self._promoted.index(self.live_id) if self.live_id in self._promoted else 0
            earlier = self._promoted[:position]
            if not earlier:
                raise RegistryError("Nothing to roll back to: the live build is the baseline.")
            to = earlier[-1]
        if to not in self._promoted:
            raise RegistryError(
                f"Version {to} was never promoted; roll back to one of {self._promoted}."
            )
        self._emit({"event": "rollback", "version_id": to})
        return to

    def lineage(self, version_id: str) -> list[str]:
        """Return the ids from the baseline down to ``version_id``."""
        chain: list[str] = []
        current: str | None = version_id
        while current is not None:
            chain.append(current)
            current = self.build(current).parent_id
        return chain[::-1]


def truncate_log(path: str | Path, events: int) -> int:
    """Keep only the first ``events`` events of a registry log; returns how many were cut.

    A run commits a step by saving its state, which records how many registry events the
    step left; what a killed process wrote after that (a version, scores, a gate decision of
    a step that was never committed) is cut here and redone, identically, by the resumed run.

    Raises:
        RegistryError: the log holds fewer events than ``events`` (it lost committed events).
    """
    target = Path(path)
    if not target.exists():
        if events:
            raise RegistryError(f"{target} is missing but {events} registry events were committed.")
        return 0
    data = target.read_bytes()
    offset = 0
    for number in range(events):
        end = data.find(b"\n", offset)
        if end < 0:
            raise RegistryError(
                f"{target} holds {number} complete events but {events} were committed; the "
                "registry log is damaged. Restore it from a backup or start a new run."
            )
        offset = end + 1
    cut = data[offset:].count(b"\n") + (0 if data.endswith(b"\n") or offset == len(data) else 1)
    if offset < len(data):
        with open(target, "r+b") as handle:
            handle.truncate(offset)
            handle.flush()
            os.fsync(handle.fileno())
    return cut
