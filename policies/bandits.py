"""Bandit policies: which of K candidate edits is best, measured against one base version?

A bandit works in **rounds**. A round fixes a base version and asks a proposer for ``arms``
candidate edits of it (by default the rule-induction proposer when it is installed, else the
operator library). Every pull applies one arm to *that base*
(``EnvAction(base_version=...)``), so all arms are judged by the same paired reward: the
arm's score minus the base's on the step's minibatch. Pulling an arm again replays it on a
new minibatch (the env registers the same version again), so its evidence grows with pulls.
When the round's budget is spent (``round_calls`` calls or ``round_pulls`` steps, whichever
comes first: pulls of cached versions cost nothing) the best arm — if its mean reward beats
``min_mean_reward`` — becomes the next round's base; otherwise the next round proposes new
arms on the same base (the proposer hears which arms lost). Rounds persist across episodes,
since versions do.

**Budget, in model calls.** A policy sees only ``info``; :class:`~policies.versions.VersionView`
counts the replay calls each step caused (a ``(version, sample)`` pair is paid once, the
response cache serves repeats), which is what the env's usage counts for train replays. A
round ends once it has spent ``round_calls`` calls (UCB1, Thompson) or run its schedule
(successive halving); after ``budget_calls`` calls in all the policy answers ``no_change``.
The env's ``max_calls`` caps every call, gate and judge included.

The three rules:

* :class:`UCB1Policy` — untried arms first, then the arm with the highest
  ``mean + c * sqrt(2 ln N / n)`` (Auer et al., 2002). Rewards are score deltas in [-1, 1],
  mostly within ±0.3, so ``c`` (default 0.5) scales the bonus to that range.
* :class:`ThompsonPolicy` — samples each arm's mean reward from its posterior and pulls the
  best sample. ``posterior="gaussian"`` (default): an arm's mean reward has a Normal prior
  ``N(0, prior_sigma^2)`` (a candidate is assumed neutral, with room for large gains) and
  rewards are Normal around it with noise ``sigma``, the pooled standard deviation of the
  round's rewards around their arms' means (``noise_sigma`` until there are two residuals,
  at least ``min_sigma``); the conjugate posterior has precision
  ``1/prior_sigma^2 + n/sigma^2`` and mean ``(sum(r)/sigma^2) / precision``.
  ``posterior="beta"``: a pull succeeds when its reward exceeds ``success_margin``, and the
  success rate has a ``Beta(1 + s, 1 + f)`` posterior.
* :class:`SuccessiveHalvingPolicy` — spends the round's calls on the promising arms (Karnin et
  al., 2013): ``ceil(log2 K)`` rungs get an equal share of the round's pulls; each rung pulls
  every surviving arm equally, then keeps the better half by mean reward over all its pulls.
  As arms are halved the pulls per arm double, so a survivor's evidence (minibatches) grows
  geometrically. See :func:`successive_halving_schedule`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.base import BasePolicy, Observation, Transition
from policies.catalog import make_proposer
from policies.proposers import Candidate, no_change_candidate, proposer_report
from policies.versions import VersionView


class BudgetWarning(UserWarning):
    """A budget will run, but is probably too small to do what the policy is for."""


class BanditConfig(BaseModel):
    """Options shared by the bandit policies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arms: int = Field(default=4, ge=1, description="Candidate edits per round.")
    proposer: str | None = Field(
        default=None, description="Proposer name or 'module:Class' (default: rule induction)."
    )
    proposer_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Proposer constructor keyword arguments."
    )
    round_calls: int | None = Field(
        default=None,
        ge=1,
        description="Model calls per round (default: 4 fresh minibatches per arm).",
    )
    round_pulls: int | None = Field(
        default=None, ge=1, description="Env steps per round at most (default: 4 per arm)."
    )
    budget_calls: int | None = Field(
        default=None, ge=1, description="Model calls the policy may spend in all (None: no cap)."
    )
    min_mean_reward: float = Field(
        default=0.0, description="A round's best arm becomes the base only above this mean."
    )


class Arm(BaseModel):
    """One candidate edit and the rewards its pulls earned against the round's base."""

    model_config = ConfigDict(extra="forbid")

    candidate: Candidate
    rewards: list[float] = Field(default_factory=list)
    version_id: str | None = None
    invalid: bool = False
    last_scores: dict[str, float] = Field(default_factory=dict)

    @property
    def pulls(self) -> int:
        """How often the arm was pulled."""
        return len(self.rewards)

    @property
    def mean(self) -> float:
        """Mean reward (0 before any pull)."""
        return float(np.mean(self.rewards)) if self.rewards else 0.0


class Rung(BaseModel):
    """One rung of successive halving: how many arms, and how often each is pulled."""

    model_config = ConfigDict(frozen=True)

    arms: int
    pulls_per_arm: int


def successive_halving_schedule(n_arms: int, budget_pulls: int) -> list[Rung]:
    """Return the rungs of one successive-halving round.

    ``ceil(log2 n)`` rungs share the budget equally; rung ``j`` has ``ceil(n / 2^j)`` arms
    and pulls each ``floor(budget / (rungs * arms_j))`` times (at least once). With one arm
    there is a single rung that spends the whole budget on it.

    Args:
        n_arms: arms at the start of the round (>= 1).
        budget_pulls: env steps the round may take.

    Returns:
        The rungs, first to last.

    Raises:
        ValueError: ``n_arms`` < 1.

    Example:
        >>> [(r.arms, r.pulls_per_arm) for r in successive_halving_schedule(8, 48)]
        [(8, 2), (4, 4), (2, 8)]
    """
    if n_arms < 1:
        raise ValueError(f"Expects at least one arm, got {n_arms}.")
    if n_arms == 1:
        return [Rung(arms=1, pulls_per_arm=max(1, budget_pulls))]
    rungs = math.ceil(math.log2(n_arms))
    schedule: list[Rung] = []
    arms = n_arms
    for _ in range(rungs):
        schedule.append(Rung(arms=arms, pulls_per_arm=max(1, budget_pulls // (rungs * arms))))
        arms = math.ceil(arms / 2)
    return schedule


def minimum_round_pulls(n_arms: int) -> int:
    """Return the fewest pulls one successive-halving round needs: one per arm per rung.

    Example:
        >>> minimum_round_pulls(8)
        14
    """
    return sum(r.arms for r in successive_halving_schedule(n_arms, 0))


class BanditPolicy(BasePolicy):
    """Rounds of arms against one base; subclasses choose the arm and the end of a round.

    Subclasses must set ``name`` and implement :meth:`select`; they may override
    :meth:`round_over`, :meth:`winner` and :meth:`start_round`.

    Args:
        seed: seeds the policy's generator (and the proposer's, if it takes a seed).
        proposer: a proposer instance; overrides the config's ``proposer`` name.
        **options: :class:`BanditConfig` fields.
    """

    name = "bandit"

    def __init__(self, seed: int | None = None, *, proposer: Any = None, **options: Any) -> None:
        super().__init__(seed)
        self.config = BanditConfig.model_validate(options)
        self.proposer = make_proposer(
            proposer if proposer is not None else self.config.proposer,
            seed=int(self.rng.integers(2**31)),
            kwargs=self.config.proposer_kwargs,
        )
        self.view = VersionView()
        self.base: str | None = None
        self.arms: list[Arm] = []
        self.round = 0
        self.round_spent = 0
        self.round_pulls = 0
        self.minibatch_size = 0
        self.pending: int | None = None
        self.history: list[dict[str, Any]] = []
        self.latest_info: dict[str, Any] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ budget
    @property
    def round_budget(self) -> int:
        """Calls one round may spend (default: 4 fresh minibatches per arm of the round)."""
        if self.config.round_calls is not None:
            return self.config.round_calls
        return 4 * (len(self.arms) or self.config.arms) * max(1, self.minibatch_size)

    @property
    def round_pull_cap(self) -> int:
        """Steps one round may take (default: 4 per arm of the round); cached pulls are free."""
        return self.config.round_pulls or 4 * (len(self.arms) or self.config.arms)

    def budget_left(self) -> bool:
        """Whether the policy may still spend calls."""
        return self.config.budget_calls is None or self.view.calls < self.config.budget_calls

    def warn_once(self, key: str, message: str) -> None:
        """Emit a :class:`BudgetWarning` once per key."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(BudgetWarning(message), stacklevel=3)

    def _check_budget(self) -> None:
        budget = self.config.budget_calls
        one_pass = self.config.arms * max(1, self.minibatch_size)
        if self.round_budget < one_pass:
            self.warn_once(
                "round",
                f"{self.name}: round_calls={self.round_budget} cannot pull each of "
                f"{self.config.arms} arms once on a fresh minibatch of {self.minibatch_size} "
                f"(needs ~{one_pass} calls); rounds will end before every arm is measured. "
                "Raise round_calls or lower arms.",
            )
        if budget is not None and budget < self.round_budget:
            self.warn_once(
                "total",
                f"{self.name}: budget_calls={budget} is smaller than a single round "
                f"({self.round_budget} calls); the policy will stop before its first decision. "
                "Raise budget_calls or lower round_calls.",
            )

    # ------------------------------------------------------------------ protocol
    def reset(self, observation: Observation, info: dict[str, Any]) -> None:
        """Record the episode's start version; the first round starts from it."""
        version = self.view.start(observation, info)
        self.latest_info = dict(info)
        self.minibatch_size = self.minibatch_size or len(info.get("minibatch") or ())
        if self.base is None:
            self.base = version
        self._check_budget()

    def act(self, observation: Observation, info: dict[str, Any]) -> Any:
        """Pull the next arm of the round (starting a round when none is running)."""
        self.latest_info = dict(info)
        if self.base is None or self.base not in self.view:
            self.base = self.view.start(observation, info)
        if not self.budget_left():
            self.pending = None
            return no_change_candidate(self.name, "The call budget is spent.").to_action(
                base_version=self.base
            )
        if not self.arms:
            self.start_round()
        playable = [i for i, arm in enumerate(self.arms) if not arm.invalid]
        if not playable:
            self.arms = []
            self.pending = None
            return no_change_candidate(self.name, "The proposer has no candidate.").to_action(
                base_version=self.base
            )
        self.pending = self.select(playable)
        return self.arms[self.pending].candidate.to_action(base_version=self.base)

    def update(self, transition: Transition) -> None:
        """Credit the pulled arm with its paired reward; close the round when it is over."""
        info = transition.info
        self.latest_info = dict(info)
        version = self.view.record(transition.action, info, transition.next_observation)
        index, self.pending = self.pending, None
        if index is None or index >= len(self.arms):
            return
        arm = self.arms[index]
        self.round_spent += self.view.last_cost
        self.round_pulls += 1
        if info.get("invalid_edit"):
            arm.invalid = True
            self._feedback(arm, float(transition.reward), False, info)
        else:
            arm.rewards.append(float(transition.reward))
            arm.version_id = version or arm.version_id
            arm.last_scores = {
                str(k): float(v) for k, v in dict(info.get("sample_scores") or {}).items()
            }
        self.on_pull(index)
        if self.round_over() or all(a.invalid for a in self.arms):
            self.finish_round()

    # ------------------------------------------------------------------ rounds
    def start_round(self) -> None:
        """Propose the round's arms on the base version."""
        assert self.base is not None
        observation = self.view.observation(self.base)
        info = self.view.info_for(self.base, self.latest_info)
        candidates = self.proposer.propose(observation, info, self.config.arms)
        self.arms = [Arm(candidate=c) for c in candidates if not c.is_no_change()]
        self.round_spent = 0
        self.round_pulls = 0

    def select(self, playable: list[int]) -> int:
        """Return the index of the arm to pull next (subclasses implement it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement select()")

    def on_pull(self, index: int) -> None:
        """Bookkeeping after arm ``index`` was credited; the default does nothing."""

    def round_over(self) -> bool:
        """Whether the round has spent its calls or taken its steps."""
        return self.round_spent >= self.round_budget or self.round_pulls >= self.round_pull_cap

    def winner(self) -> Arm | None:
        """Return the round's best measured arm (highest mean; ties: more pulls, rank)."""
        measured = [a for a in self.arms if a.pulls and not a.invalid and a.version_id]
        if not measured:
            return None
        return max(measured, key=lambda a: (a.mean, a.pulls, -self.arms.index(a)))

    def finish_round(self) -> None:
        """Move the base to the winner (if it earned it), tell the proposer, log the round."""
        best = self.winner()
        commit = (
            best is not None
            and best.mean > self.config.min_mean_reward
            and best.version_id is not None
            and best.version_id in self.view
        )
        for arm in self.arms:
            if arm.pulls and not arm.invalid:
                info = {**self.latest_info, "sample_scores": arm.last_scores, "invalid_edit": None}
                self._feedback(arm, arm.mean, commit and arm is best, info)
        self.history.append(
            {
                "round": self.round,
                "base": self.base,
                "winner": best.version_id if commit and best else None,
                "arms": [
                    {
                        "directive": a.candidate.directive_text(),
                        "kind": a.candidate.kind,
                        "pulls": a.pulls,
                        "mean": round(a.mean, 6),
                        "version": a.version_id,
                    }
                    for a in self.arms
                ],
                "calls": self.round_spent,
            }
        )
        if commit and best is not None:
            self.base = best.version_id
        self.round += 1
        self.arms = []

    def _feedback(self, arm: Arm, reward: float, accepted: bool, info: Mapping[str, Any]) -> None:
        feedback = getattr(self.proposer, "feedback", None)
        if callable(feedback):
            feedback(arm.candidate, reward, accepted, info)

    def report(self) -> dict[str, Any]:
        """Return the proposer's report (the LLM coach's requests and verdicts), if any."""
        return proposer_report(self.proposer)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Return the round, its arms, the version view and the proposer's memory."""
        proposer_state = getattr(self.proposer, "state_dict", None)
        return {
            **super().state_dict(),
            "view": self.view.state_dict(),
            "base": self.base,
            "arms": [a.model_dump(mode="json") for a in self.arms],
            "round": self.round,
            "round_spent": self.round_spent,
            "round_pulls": self.round_pulls,
            "minibatch_size": self.minibatch_size,
            "pending": self.pending,
            "history": list(self.history),
            "proposer": proposer_state() if callable(proposer_state) else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        super().load_state_dict(state)
        self.view.load_state_dict(state["view"])
        self.base = state["base"]
        self.arms = [Arm.model_validate(a) for a in state["arms"]]
        self.round = int(state["round"])
        self.round_spent = int(state["round_spent"])
        self.round_pulls = int(state["round_pulls"])
        self.minibatch_size = int(state["minibatch_size"])
        self.pending = state["pending"]
        self.history = list(state["history"])
        loader = getattr(self.proposer, "load_state_dict", None)
        if state.get("proposer") is not None and callable(loader):
            loader(state["proposer"])


class UCB1Policy(BanditPolicy):
    """UCB1 over a round's arms: untried first, then the highest upper confidence bound.

    Args:
        seed: the policy seed.
        exploration: ``c`` in ``mean + c * sqrt(2 ln N / n)``.
        **options: :class:`BanditConfig` fields (and ``proposer``).

    Example:
        >>> policy = UCB1Policy(seed=0, proposer="operators", arms=3)
        >>> policy.config.arms, policy.exploration
        (3, 0.5)
    """

    name = "ucb1"

    def __init__(
        self, seed: int | None = None, *, exploration: float = 0.5, **options: Any
    ) -> None:
        super().__init__(seed, **options)
        if exploration < 0:
            raise ValueError(f"Expects exploration >= 0, got {exploration}.")
        self.exploration = exploration

    def select(self, playable: list[int]) -> int:
        """Return the first untried arm, else the arm with the highest UCB1 index."""
        untried = [i for i in playable if not self.arms[i].pulls]
        if untried:
            return untried[0]
        total = sum(self.arms[i].pulls for i in playable)
        return max(playable, key=lambda i: (ucb1_index(self.arms[i], total, self.exploration), -i))


def ucb1_index(arm: Arm, total_pulls: int, exploration: float) -> float:
    """Return ``mean + c * sqrt(2 ln N / n)`` (infinite for an untried arm).

    Example:
        >>> arm = Arm(candidate=Candidate(edits="ADD: x", proposer="t"), rewards=[0.1, 0.3])
        >>> round(ucb1_index(arm, 8, 0.5), 4)
        0.921
    """
    if not arm.pulls:
        return math.inf
    return arm.mean + exploration * math.sqrt(2.0 * math.log(max(total_pulls, 1)) / arm.pulls)


class ThompsonPolicy(BanditPolicy):
    """Thompson sampling over a round's arms, with Gaussian or Beta posteriors (module doc).

    Args:
        seed: the policy seed (posterior draws use ``self.rng``).
        posterior: ``"gaussian"`` on the paired reward, or ``"beta"`` on reward > margin.
        prior_sigma: spread of the Normal prior on an arm's mean reward (centred at 0).
        noise_sigma: reward noise assumed before two residuals exist.
        min_sigma: floor of the estimated reward noise.
        success_margin: a Beta success is a reward above this.
        **options: :class:`BanditConfig` fields (and ``proposer``).
    """

    name = "thompson"

    def __init__(
        self,
        seed: int | None = None,
        *,
        posterior: Literal["gaussian", "beta"] = "gaussian",
        prior_sigma: float = 0.3,
        noise_sigma: float = 0.1,
        min_sigma: float = 0.02,
        success_margin: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(seed, **options)
        if posterior not in ("gaussian", "beta"):
            raise ValueError(f"Expects posterior 'gaussian' or 'beta', got {posterior!r}.")
        if prior_sigma <= 0 or noise_sigma <= 0 or min_sigma <= 0:
            raise ValueError(
                "Expects prior_sigma, noise_sigma and min_sigma > 0, got "
                f"{prior_sigma}, {noise_sigma}, {min_sigma}."
            )
        self.posterior = posterior
        self.prior_sigma = prior_sigma
        self.noise_sigma = noise_sigma
        self.min_sigma = min_sigma
        self.success_margin = success_margin

    def sigma(self) -> float:
        """Return the reward noise: pooled standard deviation of rewards around arm means."""
        residuals = [r - a.mean for a in self.arms for r in a.rewards]
        dof = len(residuals) - sum(1 for a in self.arms if a.pulls)
        if dof < 2:
            return self.noise_sigma
        return max(self.min_sigma, math.sqrt(sum(x * x for x in residuals) / dof))

    def gaussian_posterior(self, arm: Arm, sigma: float) -> tuple[float, float]:
        """Return the mean and standard deviation of the arm's mean-reward posterior.

        Normal prior ``N(0, prior_sigma^2)``, Normal rewards with noise ``sigma``: precision
        ``1/prior_sigma^2 + n/sigma^2``, mean ``(sum(r)/sigma^2) / precision``.
        """
        precision = 1.0 / self.prior_sigma**2 + arm.pulls / sigma**2
        return (sum(arm.rewards) / sigma**2) / precision, math.sqrt(1.0 / precision)

    def posterior_mean(self, arm: Arm) -> float:
        """Return the arm's posterior mean reward (Gaussian) or success rate (Beta)."""
        if self.posterior == "beta":
            wins = sum(1 for r in arm.rewards if r > self.success_margin)
            return (1 + wins) / (2 + arm.pulls)
        return self.gaussian_posterior(arm, self.sigma())[0]

    def draw(self, arm: Arm, sigma: float) -> float:
        """Return one sample from the arm's posterior."""
        if self.posterior == "beta":
            wins = sum(1 for r in arm.rewards if r > self.success_margin)
            return float(self.rng.beta(1 + wins, 1 + arm.pulls - wins))
        mean, spread = self.gaussian_posterior(arm, sigma)
        return float(self.rng.normal(mean, spread))

    def select(self, playable: list[int]) -> int:
        """Return the arm whose posterior draw is highest."""
        sigma = self.sigma()
        draws = {i: self.draw(self.arms[i], sigma) for i in playable}
        return max(playable, key=lambda i: (draws[i], -i))

    def winner(self) -> Arm | None:
        """Return the measured arm with the highest posterior mean (ties: mean reward)."""
        measured = [a for a in self.arms if a.pulls and not a.invalid and a.version_id]
        if not measured:
            return None
        return max(measured, key=lambda a: (self.posterior_mean(a), a.mean, a.pulls))


class SuccessiveHalvingPolicy(BanditPolicy):
    """Successive halving over a round's arms; survivors get geometrically more minibatches.

    The round's pulls are fixed when it starts: ``round_calls`` divided by the calls a pull
    is expected to cost (the mean cost of the last pulls; one fresh minibatch before any),
    at most ``round_pulls``.
    The schedule is :func:`successive_halving_schedule`; a budget too small for one pull per
    arm per rung warns (:class:`BudgetWarning`) and pulls each survivor once per rung.

    Example:
        >>> policy = SuccessiveHalvingPolicy(seed=0, proposer="operators", arms=4)
        >>> [(r.arms, r.pulls_per_arm) for r in policy.plan(4, budget_pulls=16)]
        [(4, 2), (2, 4)]
    """

    name = "successive_halving"

    def __init__(self, seed: int | None = None, **options: Any) -> None:
        super().__init__(seed, **options)
        self.schedule: list[Rung] = []
        self.rung = 0
        self.survivors: list[int] = []
        self.rung_pulls: dict[int, int] = {}
        self.pull_costs: list[int] = []

    def expected_pull_cost(self) -> float:
        """Calls one pull is expected to cost: the recent mean, one minibatch before any."""
        recent = self.pull_costs[-16:]
        if recent:
            return max(1.0, float(np.mean(recent)))
        return float(max(1, self.minibatch_size))

    def plan(self, n_arms: int, budget_pulls: int | None = None) -> list[Rung]:
        """Return the schedule for ``n_arms`` (warns when the budget is short).

        Args:
            n_arms: arms in the round.
            budget_pulls: pulls the round may take (default: ``round_calls`` divided by the
                expected cost of a pull).
        """
        pulls = (
            budget_pulls
            if budget_pulls is not None
            else min(self.round_pull_cap, int(self.round_budget // self.expected_pull_cost()))
        )
        needed = minimum_round_pulls(n_arms)
        if pulls < needed:
            self.warn_once(
                f"sh{n_arms}",
                f"successive_halving: the round's budget buys {pulls} pulls (round_calls="
                f"{self.round_budget}, ~{self.expected_pull_cost():.0f} calls per pull), fewer "
                f"than the {needed} a round over {n_arms} arms needs (one per arm per rung); "
                "each survivor is pulled once per rung, so rounds spend more than round_calls. "
                "Raise round_calls or lower arms.",
            )
        return successive_halving_schedule(n_arms, pulls)

    def start_round(self) -> None:
        """Propose arms and fix the round's schedule."""
        super().start_round()
        self.schedule = self.plan(len(self.arms)) if self.arms else []
        self.rung = 0
        self.survivors = list(range(len(self.arms)))
        self.rung_pulls = dict.fromkeys(self.survivors, 0)

    def select(self, playable: list[int]) -> int:
        """Pull the surviving arm with the fewest pulls in this rung (round-robin)."""
        candidates = [i for i in self.survivors if i in playable] or playable
        return min(candidates, key=lambda i: (self.rung_pulls.get(i, 0), i))

    def on_pull(self, index: int) -> None:
        """Count the pull in its rung and record what it cost."""
        self.rung_pulls[index] = self.rung_pulls.get(index, 0) + 1
        self.pull_costs.append(self.view.last_cost)

    def round_over(self) -> bool:
        """Advance rungs as they complete; the round is over after the last rung."""
        alive = [i for i in self.survivors if not self.arms[i].invalid]
        if not alive or not self.schedule:
            return True
        target = self.schedule[self.rung].pulls_per_arm
        if any(self.rung_pulls.get(i, 0) < target for i in alive):
            return False
        self.rung += 1
        if self.rung >= len(self.schedule):
            return True
        keep = self.schedule[self.rung].arms
        ranked = sorted(alive, key=lambda i: (-self.arms[i].mean, i))
        self.survivors = ranked[:keep]
        self.rung_pulls = dict.fromkeys(self.survivors, 0)
        return False

    def winner(self) -> Arm | None:
        """Return the best surviving arm by mean reward over all its pulls."""
        alive = [
            self.arms[i]
            for i in self.survivors
            if self.arms[i].pulls and not self.arms[i].invalid and self.arms[i].version_id
        ]
        if not alive:
            return super().winner()
        return max(alive, key=lambda a: (a.mean, a.pulls))

    def state_dict(self) -> dict[str, Any]:
        """Return the bandit state plus the schedule and rung bookkeeping."""
        return {
            **super().state_dict(),
            "schedule": [r.model_dump() for r in self.schedule],
            "rung": self.rung,
            "survivors": list(self.survivors),
            "rung_pulls": {str(k): v for k, v in self.rung_pulls.items()},
            "pull_costs": list(self.pull_costs[-64:]),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        super().load_state_dict(state)
        self.schedule = [Rung.model_validate(r) for r in state["schedule"]]
        self.rung = int(state["rung"])
        self.survivors = [int(i) for i in state["survivors"]]
        self.rung_pulls = {int(k): int(v) for k, v in state["rung_pulls"].items()}
        self.pull_costs = [int(c) for c in state["pull_costs"]]
