"""What does a policy know about the versions it made? A local view built from steps alone.

Policies that branch from versions other than the env's current one (bandits measuring every
arm against one base, a population picking parents from its pool) need each version's blocks
to propose edits for it, and its per-sample scores to compare versions. The env shows only the
current version, so :class:`VersionView` rebuilds the rest from what the Gymnasium API gives:
a new version's state is its base's state with the step's edits applied (the same
:func:`~selfimprove_rl.prompt.apply` the env runs), its per-sample scores come from
``info["sample_scores"]``, and its example rows (input, output, reference, score) from
``info["examples"]`` whenever it is the env's current version.

**Calls.** The view also counts the replay calls the steps caused: the response cache answers
a repeated request for free, and a request is fixed by the version and the sample, so a
``(version, sample)`` pair is paid once. Each step pays for the base and the new version on
the step's minibatch (``info["minibatch"]``), a reset for the start version on its minibatch.
This is what the env's ``usage`` counts for train replays, learned from ``info`` alone; test
replays of the runner's gate and judge calls are not visible to a policy (the env's
``max_calls`` caps all of them).

Headings are not part of observations, so rebuilt states carry block names, lines and the
model (what edits refer to) but no titles.

Example:
    >>> view = VersionView()
    >>> view.start({"blocks": {"sop": "a"}, "model": "m", "version": "v0"}, {})
    'v0'
    >>> view.observation("v0")["blocks"]
    {'sop': 'a'}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from envs.observation import build_observation
from envs.spaces import EnvAction
from policies.proposers import state_from_observation
from selfimprove_rl.errors import InvalidEdit, PolicyError
from selfimprove_rl.prompt import Edit, PromptState, apply, parse_directives

Observation = Mapping[str, Any]


def edits_of(action: Any) -> list[Edit] | None:
    """Return the edits an env action applies, or ``None`` when they cannot be read.

    Example:
        >>> edits_of("ADD: be brief")[0].text
        'be brief'
    """
    raw = action.edits if isinstance(action, EnvAction) else action
    try:
        if isinstance(raw, str):
            return parse_directives(raw)
        if isinstance(raw, list | tuple):
            return list(raw)
        return [raw]
    except InvalidEdit:
        return None


class VersionView:
    """States, lineage, per-sample scores and example rows of every version a policy saw.

    Args:
        max_rows: example rows kept per version (worst first when read back).
    """

    def __init__(self, max_rows: int = 64) -> None:
        self.max_rows = max_rows
        self.states: dict[str, PromptState] = {}
        self.parents: dict[str, str | None] = {}
        self.sample_scores: dict[str, dict[str, float]] = {}
        self.rows: dict[str, dict[str, dict[str, Any]]] = {}
        self.eval_scores: dict[str, dict[str, list[float]]] = {}
        self.evaluated: dict[str, set[str]] = {}
        self.calls = 0
        self.last_cost = 0

    def __contains__(self, version_id: object) -> bool:
        return version_id in self.states

    # ------------------------------------------------------------------ recording
    def start(self, observation: Observation, info: Mapping[str, Any]) -> str:
        """Record the version an episode starts at (from a reset); returns its id."""
        version = str(observation.get("version") or info.get("current_version_id") or "")
        if not version:
            raise PolicyError(
                "Expects the observation to name its version (observation['version']), got "
                "none; use a PromptEnv observation."
            )
        if version not in self.states:
            self.states[version] = state_from_observation(observation)
            self.parents.setdefault(version, None)
        self._rows(info)
        self._charge([version], info)
        return version

    def _charge(self, versions: list[str], info: Mapping[str, Any]) -> int:
        samples = [str(s) for s in info.get("minibatch") or ()]
        cost = 0
        for version in dict.fromkeys(versions):
            seen = self.evaluated.setdefault(version, set())
            fresh = [s for s in samples if s not in seen]
            seen.update(fresh)
            cost += len(fresh)
        self.calls += cost
        self.last_cost = cost
        return cost

    def record(
        self, action: Any, info: Mapping[str, Any], next_observation: Observation | None = None
    ) -> str | None:
        """Record what one step made; returns the new version id (``None`` if invalid).

        Args:
            action: the action the policy took (its edits are re-applied locally).
            info: the step's info.
            next_observation: the step's observation; when it shows the new version, its
                blocks are taken as they are.
        """
        self._rows(info)
        version = str(info.get("version_id") or "")
        base = str(info.get("base_version_id") or "")
        if info.get("budget_exhausted") and version == base:
            self.last_cost = 0  # the env refused to replay anything
            return None
        self._charge([base, version] if base else [version], info)
        if info.get("invalid_edit") or not version:
            return None
        if version not in self.states:
            if next_observation is not None and next_observation.get("version") == version:
                self.states[version] = state_from_observation(next_observation)
            elif base in self.states:
                edits = edits_of(action)
                if edits is None:
                    return None
                try:
                    self.states[version] = apply(self.states[base], edits)
                except InvalidEdit:
                    return None
            else:
                return None
            self.parents[version] = base if base != version else None
        self.sample_scores.setdefault(version, {}).update(
            {str(k): float(v) for k, v in dict(info.get("sample_scores") or {}).items()}
        )
        per_eval = self.eval_scores.setdefault(version, {})
        for name, value in dict(info.get("scores") or {}).items():
            per_eval.setdefault(str(name), []).append(float(value))
        return version

    def _rows(self, info: Mapping[str, Any]) -> None:
        current = info.get("current_version_id")
        rows = [r for r in info.get("examples") or () if isinstance(r, Mapping)]
        if not current or not rows:
            return
        kept = self.rows.setdefault(str(current), {})
        for row in rows:
            sample_id = row.get("sample_id")
            if isinstance(sample_id, str):
                kept.pop(sample_id, None)
                kept[sample_id] = dict(row)
                if "score" in row:
                    self.sample_scores.setdefault(str(current), {})[sample_id] = float(row["score"])
        while len(kept) > 4 * self.max_rows:
            kept.pop(next(iter(kept)))

    # ------------------------------------------------------------------ reading
    def state(self, version_id: str) -> PromptState:
        """Return a version's rebuilt state.

        Raises:
            PolicyError: the view never saw that version.
        """
        try:
            return self.states[version_id]
        except KeyError:
            raise PolicyError(
                f"Version {version_id!r} was never observed by this policy; known: "
                f"{', '.join(list(self.states)[-5:]) or 'none'}."
            ) from None

    def observation(self, version_id: str) -> dict[str, Any]:
        """Return an observation of a version, shaped like the env's."""
        state = self.state(version_id)
        scores = self.eval_scores.get(version_id, {})
        values = [float(np.mean(v)) for v in scores.values()] or [0.0]
        return build_observation(state, version_id, values)

    def info_for(self, version_id: str, latest: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``latest`` info re-aimed at a version: its id and its own example rows.

        Proposers read ``info["examples"]`` as rows *of the observed version*; rows of another
        version would teach them the wrong outputs, so only this version's rows are passed.
        """
        rows = sorted(
            self.rows.get(version_id, {}).values(),
            key=lambda row: (float(row.get("score", 0.0)), str(row.get("sample_id"))),
        )[: self.max_rows]
        return {**dict(latest), "current_version_id": version_id, "examples": rows}

    def mean_score(self, version_id: str) -> float:
        """Return the mean of a version's per-sample scores (0 when it has none)."""
        scores = self.sample_scores.get(version_id) or {}
        return float(np.mean(list(scores.values()))) if scores else 0.0

    def ancestors(self, version_id: str) -> list[str]:
        """Return the version's lineage from itself up to the oldest known ancestor."""
        chain: list[str] = []
        current: str | None = version_id
        while current is not None and current not in chain:
            chain.append(current)
            current = self.parents.get(current)
        return chain

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Return the view as JSON-serialisable data."""
        return {
            "states": {k: s.model_dump(mode="json") for k, s in self.states.items()},
            "parents": dict(self.parents),
            "sample_scores": {k: dict(v) for k, v in self.sample_scores.items()},
            "rows": {k: list(v.values()) for k, v in self.rows.items()},
            "eval_scores": {
                k: {n: list(x) for n, x in v.items()} for k, v in self.eval_scores.items()
            },
            "evaluated": {k: sorted(v) for k, v in self.evaluated.items()},
            "calls": self.calls,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.states = {k: PromptState.model_validate(v) for k, v in state["states"].items()}
        self.parents = dict(state["parents"])
        self.sample_scores = {k: dict(v) for k, v in state["sample_scores"].items()}
        self.rows = {k: {str(r["sample_id"]): dict(r) for r in v} for k, v in state["rows"].items()}
        self.eval_scores = {
            k: {n: [float(x) for x in xs] for n, xs in v.items()}
            for k, v in state["eval_scores"].items()
        }
        self.evaluated = {k: set(v) for k, v in state.get("evaluated", {}).items()}
        self.calls = int(state.get("calls", 0))
