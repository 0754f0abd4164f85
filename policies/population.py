"""PopulationPolicy: a pool of versions, Pareto parent selection, mutation and merge (GEPA-like).

The policy keeps a **pool** of versions with their lineage (the baseline first). Each step is
one of three moves, all plain env actions against a chosen base version:

1. **Mutate.** Pick a parent from the Pareto front of the pool (:func:`pareto_front`): the
   objectives are the train samples (each member's score on each sample it was replayed on,
   from ``info["sample_scores"]`` and the example rows) and, when the checkpoint has several
   evals, each eval's mean score. A member is on the front when it is best on at least one
   objective and not dominated in the sense below; the parent is drawn with probability
   proportional to how many objectives it wins (Agrawal et al., *GEPA*, 2025: keeping every
   instance's winner alive beats always extending the best aggregate). Ask the proposer for
   candidates on that parent and apply the first one not yet tried on it.
2. **Accept on the minibatch, then evaluate fully.** A mutation whose paired reward beats
   ``accept_margin`` is replayed ``eval_steps`` more times against its parent (each time on a
   new minibatch, the env registering the same version); it joins the pool only if its mean
   reward over all those minibatches still beats the margin. Test-split scoring and promotion
   stay with the runner's gate, which sees every positive step.
3. **Merge.** Every ``merge_every`` pool additions, two members that descend from a common
   ancestor along different lines are merged by taking each block (and the model) from the
   parent that changed it (:func:`merge_states`); the merge is then accepted like a mutation.

Every choice is budgeted in model calls counted by :class:`~policies.versions.VersionView`
(``budget_calls``); the env's ``max_calls`` caps all calls.

Example:
    >>> table = {"v0": {"a": 1.0, "b": 0.0}, "v1": {"a": 0.0, "b": 1.0}, "v2": {"a": 0.5, "b": 0.5}}
    >>> pareto_front(table)
    {'v0': 1, 'v1': 1}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.base import BasePolicy, Observation, Transition
from policies.catalog import make_proposer
from policies.proposers import Candidate, no_change_candidate, proposer_report
from policies.versions import VersionView
from selfimprove_rl.prompt import Edit, PromptState, ReplaceBlock, SetModel

ScoreTable = Mapping[str, Mapping[str, float]]


def pareto_front(
    table: ScoreTable, *, min_shared: int = 2, tolerance: float = 1e-9
) -> dict[str, int]:
    """Return the Pareto-front members of a score table and how many objectives each wins.

    For every objective scored by at least ``min_shared`` members (every objective when the
    table has fewer members), the *winners* are the members within ``tolerance`` of its best
    score; members missing a score there do not compete. A winner is then *dominated* when
    every objective it wins is also won by another member still standing; dominated members
    are removed one at a time, weakest first (fewest wins, then lowest mean score, then the
    later in the table), so every objective keeps at least one winner and of two identical
    members the earlier (in a pool: the older, shorter prompt) stays.

    Args:
        table: member → objective → score (higher is better); missing objectives allowed.
        min_shared: members an objective needs to count.
        tolerance: scores this close to the best also win.

    Returns:
        Surviving member → number of objectives it wins (>= 1), in table order. Empty for an
        empty table.

    Example:
        >>> pareto_front({"a": {"x": 1.0, "y": 1.0}, "b": {"x": 1.0, "y": 0.0}})
        {'a': 2}
    """
    members = [m for m in table if table[m]]
    if not members:
        return {}
    shared = min(min_shared, len(members))
    objectives: dict[str, list[str]] = {}
    for member in members:
        for objective in table[member]:
            objectives.setdefault(objective, []).append(member)
    winners: list[set[str]] = []
    for objective, scored in objectives.items():
        if len(scored) < shared:
            continue
        best = max(float(table[m][objective]) for m in scored)
        winners.append({m for m in scored if float(table[m][objective]) >= best - tolerance})
    if not winners:
        return pareto_front(table, min_shared=1, tolerance=tolerance) if shared > 1 else {}
    standing = {m for group in winners for m in group}
    position = {m: i for i, m in enumerate(members)}

    def wins(member: str) -> int:
        return sum(1 for group in winners if member in group)

    def mean(member: str) -> float:
        return float(np.mean([float(v) for v in table[member].values()]))

    changed = True
    while changed:
        changed = False
        for member in sorted(standing, key=lambda m: (wins(m), mean(m), -position[m])):
            groups = [group for group in winners if member in group]
            if all(any(o in standing and o != member for o in group) for group in groups):
                standing.discard(member)
                changed = True
                break
    return {m: wins(m) for m in members if m in standing}


def sample_parent(front: Mapping[str, int], rng: np.random.Generator) -> str:
    """Draw a member with probability proportional to its wins.

    Raises:
        ValueError: the front is empty.
    """
    if not front:
        raise ValueError("Expects a non-empty Pareto front, got none.")
    names = list(front)
    weights = np.asarray([front[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def nearest_common_ancestor(
    parents: Mapping[str, str | None], first: str, second: str
) -> str | None:
    """Return the closest version both descend from (either one itself counts), if any.

    Example:
        >>> nearest_common_ancestor({"v0": None, "v1": "v0", "v2": "v1", "v3": "v1"}, "v2", "v3")
        'v1'
    """
    seen: list[str] = []
    current: str | None = first
    while current is not None and current not in seen:
        seen.append(current)
        current = parents.get(current)
    current = second
    visited: set[str] = set()
    while current is not None and current not in visited:
        if current in seen:
            return current
        visited.add(current)
        current = parents.get(current)
    return None


def merge_states(
    ancestor: PromptState, first: PromptState, second: PromptState
) -> PromptState | None:
    """Merge two descendants of ``ancestor`` block by block.

    Each block (and the model) comes from the parent that changed it relative to the
    ancestor; when both changed it, ``first`` (the preferred parent) keeps its own. Blocks
    keep ``first``'s order, titles and frozen flags.

    Returns:
        The merged state, or ``None`` when the three states do not share block names or the
        merge would equal one of the parents (nothing to gain).

    Example:
        >>> from selfimprove_rl.prompt import Block
        >>> def state(a, b):
        ...     return PromptState(blocks=(Block(name="a", lines=a), Block(name="b", lines=b)),
        ...                        model="m")
        >>> ancestor = state(("x",), ("y",))
        >>> merged = merge_states(ancestor, state(("X",), ("y",)), state(("x",), ("Y",)))
        >>> [b.lines for b in merged.blocks]
        [('X',), ('Y',)]
    """
    names = first.block_names
    if set(names) != set(ancestor.block_names) or set(names) != set(second.block_names):
        return None
    blocks = []
    for block in first.blocks:
        base_lines = ancestor.block(block.name).lines
        other_lines = second.block(block.name).lines
        take_other = block.lines == base_lines and other_lines != base_lines
        blocks.append(block.model_copy(update={"lines": other_lines}) if take_other else block)
    model = second.model if first.model == ancestor.model else first.model
    merged = first.model_copy(update={"blocks": tuple(blocks), "model": model})
    if merged.fingerprint() in (first.fingerprint(), second.fingerprint()):
        return None
    return merged


def edits_between(before: PromptState, after: PromptState) -> list[Edit]:
    """Return the edits that turn ``before`` into ``after``: block replacements and a model switch.

    Example:
        >>> from selfimprove_rl.prompt import Block
        >>> a = PromptState(blocks=(Block(name="sop", lines=("x",)),), model="m")
        >>> edits_between(a, a.with_block(Block(name="sop", lines=("y",))))
        [ReplaceBlock(kind='replace_block', lines=('y',), block='sop')]
    """
    edits: list[Edit] = [
        ReplaceBlock(lines=block.lines, block=block.name)
        for block in after.blocks
        if before.block(block.name).lines != block.lines
    ]
    if before.model != after.model:
        edits.append(SetModel(model=after.model))
    return edits


class PopulationConfig(BaseModel):
    """Options of the population policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proposer: str | None = Field(
        default=None, description="Proposer name or 'module:Class' (default: rule induction)."
    )
    proposer_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Proposer constructor keyword arguments."
    )
    candidates: int = Field(
        default=3, ge=1, description="Candidates asked per mutation (the first untried is used)."
    )
    eval_steps: int = Field(
        default=2, ge=0, description="Extra minibatches an accepted candidate is replayed on."
    )
    accept_margin: float = Field(
        default=0.0, description="Mean paired reward a candidate must beat to join the pool."
    )
    merge_every: int = Field(
        default=3, ge=0, description="Try a merge after this many pool additions (0: never)."
    )
    min_shared: int = Field(
        default=2, ge=1, description="Members an objective needs to count in the Pareto front."
    )
    budget_calls: int | None = Field(
        default=None, ge=1, description="Model calls the policy may spend in all (None: no cap)."
    )


class Trial(BaseModel):
    """A candidate in flight: what it is, where it branches from, what it earned so far."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    candidate: Candidate
    parent: str
    version: str | None = None
    rewards: list[float] = Field(default_factory=list)
    remaining: int = 0
    scores: dict[str, float] = Field(default_factory=dict)


class PopulationPolicy(BasePolicy):
    """Pool of versions; Pareto parents; proposer mutations; block merges (see the module doc).

    Args:
        seed: seeds parent draws (and the proposer, if it takes a seed).
        proposer: a proposer instance; overrides the config's ``proposer`` name.
        **options: :class:`PopulationConfig` fields.

    Example:
        >>> policy = PopulationPolicy(seed=0, proposer="operators", eval_steps=1)
        >>> policy.config.eval_steps
        1
    """

    name = "population"

    def __init__(self, seed: int | None = None, *, proposer: Any = None, **options: Any) -> None:
        super().__init__(seed)
        self.config = PopulationConfig.model_validate(options)
        self.proposer = make_proposer(
            proposer if proposer is not None else self.config.proposer,
            seed=int(self.rng.integers(2**31)),
            kwargs=self.config.proposer_kwargs,
        )
        self.view = VersionView()
        self.pool: list[str] = []
        self.trial: Trial | None = None
        self.tried: dict[str, list[str]] = {}
        self.merged_pairs: list[str] = []
        self.additions_since_merge = 0
        self.log: list[dict[str, Any]] = []
        self.latest_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ protocol
    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Record the start version; it seeds the pool."""
        version = self.view.start(observation, info)
        self.latest_info = dict(info)
        if not self.pool:
            self.pool.append(version)

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Continue evaluating a candidate, merge, or mutate a Pareto parent."""
        self.latest_info = dict(info)
        if not self.pool:
            self.pool.append(self.view.start(observation, info))
        current = str(info.get("current_version_id") or observation.get("version") or self.pool[0])
        if self.config.budget_calls is not None and self.view.calls >= self.config.budget_calls:
            self.trial = None
            return no_change_candidate(self.name, "The call budget is spent.").to_action(current)
        if self.trial is not None and self.trial.remaining > 0:
            return self.trial.candidate.to_action(base_version=self.trial.parent)
        self.trial = self._merge_trial() or self._mutation_trial()
        if self.trial is None:
            return no_change_candidate(self.name, "No untried candidate.").to_action(current)
        return self.trial.candidate.to_action(base_version=self.trial.parent)

    def update(self, transition: Transition) -> None:
        """Accept, keep evaluating, or reject the candidate in flight."""
        info = transition.info
        self.latest_info = dict(info)
        version = self.view.record(transition.action, info, transition.next_observation)
        trial = self.trial
        if trial is None:
            return
        reward = float(transition.reward)
        if trial.version is None:
            if info.get("invalid_edit") or version is None or version == trial.parent:
                self._close(trial, accepted=False, reason="invalid or no change", info=info)
                return
            trial.version = version
        elif version != trial.version:
            self._close(
                trial, accepted=False, reason="re-evaluation made another version", info=info
            )
            return
        trial.rewards.append(reward)
        trial.scores = {str(k): float(v) for k, v in dict(info.get("sample_scores") or {}).items()}
        if trial.remaining == 0 and len(trial.rewards) == 1:
            if reward <= self.config.accept_margin:
                self._close(trial, accepted=False, reason="minibatch reward", info=info)
                return
            trial.remaining = self.config.eval_steps
        else:
            trial.remaining -= 1
        if trial.remaining <= 0:
            mean = float(np.mean(trial.rewards))
            accepted = mean > self.config.accept_margin
            self._close(trial, accepted=accepted, reason=f"mean reward {mean:+.4f}", info=info)

    def _close(self, trial: Trial, *, accepted: bool, reason: str, info: Mapping[str, Any]) -> None:
        self.trial = None
        if accepted and trial.version is not None and trial.version not in self.pool:
            self.pool.append(trial.version)
            self.additions_since_merge += 1
        self.log.append(
            {
                "kind": trial.kind,
                "parent": trial.parent,
                "version": trial.version,
                "directive": trial.candidate.directive_text(),
                "rewards": [round(r, 6) for r in trial.rewards],
                "accepted": accepted,
                "reason": reason,
            }
        )
        feedback = getattr(self.proposer, "feedback", None)
        if trial.kind == "mutation" and callable(feedback):
            mean = float(np.mean(trial.rewards)) if trial.rewards else 0.0
            feedback(trial.candidate, mean, accepted, {**dict(info), "sample_scores": trial.scores})

    # ------------------------------------------------------------------ moves
    def score_table(self) -> dict[str, dict[str, float]]:
        """Return the pool's objectives: per-sample scores, and per-eval means with 2+ evals."""
        table: dict[str, dict[str, float]] = {}
        for member in self.pool:
            row = {f"sample:{k}": v for k, v in self.view.sample_scores.get(member, {}).items()}
            evals = {
                k: v for k, v in self.view.eval_scores.get(member, {}).items() if k != "aggregate"
            }
            if len(evals) > 1:
                row.update({f"eval:{k}": float(np.mean(v)) for k, v in evals.items()})
            table[member] = row
        return table

    def front(self) -> dict[str, int]:
        """Return the pool's Pareto front (member → objectives won)."""
        front = pareto_front(self.score_table(), min_shared=self.config.min_shared)
        return front or {self.pool[-1]: 1}

    def _mutation_trial(self) -> Trial | None:
        front = self.front()
        order = [sample_parent(front, self.rng)]
        order += sorted(front, key=lambda m: -front[m])
        order += [m for m in reversed(self.pool)]
        for parent in dict.fromkeys(order):
            if parent not in self.view:
                continue
            observation = self.view.observation(parent)
            info = self.view.info_for(parent, self.latest_info)
            tried = self.tried.setdefault(parent, [])
            for candidate in self.proposer.propose(observation, info, self.config.candidates):
                if candidate.is_no_change() or candidate.key() in tried:
                    continue
                tried.append(candidate.key())
                return Trial(kind="mutation", candidate=candidate, parent=parent)
        return None

    def _merge_trial(self) -> Trial | None:
        if not self.config.merge_every or self.additions_since_merge < self.config.merge_every:
            return None
        self.additions_since_merge = 0
        front = self.front()
        ranked = sorted(self.pool, key=lambda m: (-front.get(m, 0), -self.view.mean_score(m), m))
        for i, first in enumerate(ranked):
            for second in ranked[i + 1 :]:
                pair = "|".join(sorted((first, second)))
                if pair in self.merged_pairs:
                    continue
                merged = self._merge(first, second)
                if merged is None:
                    continue
                self.merged_pairs.append(pair)
                edits = edits_between(self.view.state(first), merged)
                candidate = Candidate(
                    edits=edits,
                    rationale=f"Merge {first} with the blocks {second} changed.",
                    proposer=self.name,
                    kind="merge",
                    meta={"parents": [first, second]},
                )
                return Trial(kind="merge", candidate=candidate, parent=first)
        return None

    def _merge(self, first: str, second: str) -> PromptState | None:
        ancestor = nearest_common_ancestor(self.view.parents, first, second)
        if ancestor is None or ancestor in (first, second) or ancestor not in self.view:
            return None
        return merge_states(
            self.view.state(ancestor), self.view.state(first), self.view.state(second)
        )

    # ------------------------------------------------------------------ state
    def report(self) -> dict[str, Any]:
        """Return the proposer's report (the LLM coach's requests and verdicts), if any."""
        return proposer_report(self.proposer)

    def state_dict(self) -> dict[str, Any]:
        """Return the pool, lineage view, trial in flight, tried candidates and the log."""
        proposer_state = getattr(self.proposer, "state_dict", None)
        return {
            **super().state_dict(),
            "view": self.view.state_dict(),
            "pool": list(self.pool),
            "trial": self.trial.model_dump(mode="json") if self.trial else None,
            "tried": {k: list(v) for k, v in self.tried.items()},
            "merged_pairs": list(self.merged_pairs),
            "additions_since_merge": self.additions_since_merge,
            "log": list(self.log),
            "proposer": proposer_state() if callable(proposer_state) else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        super().load_state_dict(state)
        self.view.load_state_dict(state["view"])
        self.pool = list(state["pool"])
        self.trial = Trial.model_validate(state["trial"]) if state.get("trial") else None
        self.tried = {k: list(v) for k, v in state["tried"].items()}
        self.merged_pairs = list(state["merged_pairs"])
        self.additions_since_merge = int(state["additions_since_merge"])
        self.log = list(state["log"])
        loader = getattr(self.proposer, "load_state_dict", None)
        if state.get("proposer") is not None and callable(loader):
            loader(state["proposer"])
