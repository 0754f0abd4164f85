"""What must a run hold back for its final report, and what may still start?

The final report scores the promoted (live) and the baseline build on test and holdout,
wherever a split was not scored yet: that is what a run's call budget reserves
(:meth:`ReportBudget.reserve`, worked out exactly from the response cache, judge verdicts
bounded by one call per item). Every step, gate and new episode is admitted only if it fits
next to that reserve; a gate reserves for the larger of the two reports it can lead to (the
live build's, or the candidate's if it is promoted), and the sequential gate checks each
chunk of paired test samples against it before scoring it. The report itself then scores test and
holdout in full, and train only when what is left covers it.

Works on a :class:`~envs.prompt_env.PromptEnv` (the unwrapped env) by its public methods.
"""

from __future__ import annotations

from typing import Any

from selfimprove_rl.errors import ConfigError
from selfimprove_rl.registry import Registry, SplitScore

SPLITS = ("train", "test", "holdout")
REPORT_SPLITS = ("test", "holdout")


class ReportBudget:
    """The call-budget rules of a run around its final report.

    Args:
        env: the unwrapped :class:`~envs.prompt_env.PromptEnv`.
    """

    def __init__(self, env: Any) -> None:
        self.env = env

    @property
    def registry(self) -> Registry:
        """The env's registry."""
        registry: Registry = self.env.registry
        return registry

    @property
    def max_calls(self) -> int | None:
        """The run's call budget (``None``: none)."""
        limit: int | None = self.env.config.max_calls
        return limit

    def reserve(self, candidate: str | None = None, *, gate_scores_test: bool = True) -> int:
        """Calls the final report needs at most if it ran now (or with ``candidate`` live).

        With ``gate_scores_test`` (the full-split gate) a candidate's test split is left out:
        its gate scores it, and charges for it. The sequential gate scores only some test
        samples, so the report may still need the rest (the cache prices what it has).
        """
        if self.max_calls is None:
            return 0
        registry = self.registry
        live = candidate or registry.live_id
        total = 0
        for version_id in dict.fromkeys([live, registry.baseline_id]):
            scored = registry.record(version_id).scores
            for split in REPORT_SPLITS:
                skip = gate_scores_test and version_id == candidate and split == "test"
                if split in scored or skip:
                    continue
                total += int(self.env.calls_to_score_version(version_id, split))
        return total

    def check_start(self) -> None:
        """Refuse, before any call, a budget below the first minibatch plus the report.

        Raises:
            ConfigError: ``max_calls`` cannot cover them (the numbers are in the message).
        """
        report, reset = self.reserve(), int(self.env.reset_calls_bound())
        if self.max_calls is not None and report + reset > self.max_calls:
            raise ConfigError(
                f"Expects max_calls to cover the first minibatch and the final report, got "
                f"max_calls={self.max_calls}: the first minibatch takes up to {reset} calls "
                f"and scoring the baseline on test and holdout up to {report}. Raise [env] "
                f"max_calls (compare: --budget-calls) above {report + reset} plus what the "
                "steps should spend, or use less data."
            )

    def gate_refusal(self, candidate: str) -> tuple[int, str | None]:
        """Whether gating ``candidate`` fits; returns the reserve to hold, and why not if not."""
        registry, spend = self.registry, self.env.spend
        live = registry.live_id
        needed = sum(
            int(self.env.calls_to_score_version(v, "test"))
            for v in (live, candidate)
            if "test" not in registry.record(v).scores
        )
        reserve = max(self.reserve(), self.reserve(candidate=candidate))
        if spend.affordable(needed, reserve=reserve):
            return reserve, None
        left = (self.max_calls or 0) - spend.usage["calls"]
        return reserve, (
            f"call budget: gating {candidate} needs up to {needed} calls and the final report "
            f"up to {reserve}, but {left} are left of max_calls={self.max_calls}"
        )

    def gate_reserve(self, candidate: str) -> int:
        """What the sequential gate of ``candidate`` must leave for the report, either way."""
        return max(self.reserve(), self.reserve(candidate=candidate, gate_scores_test=False))

    def reset_refusal(self) -> str | None:
        """Why a new episode may not start (its first minibatch does not fit), or ``None``."""
        bound, spend = int(self.env.reset_calls_bound()), self.env.spend
        if spend.affordable(bound):
            return None
        return (
            f"call budget: a new episode's first minibatch needs up to {bound} calls; "
            f"{spend.usage['calls']} of max_calls={self.max_calls} are spent and "
            f"{spend.reserved_calls} reserved for the report"
        )

    def score_report(self, live: str, baseline: str) -> dict[str, dict[str, SplitScore | None]]:
        """Score the live and the baseline build for the report; returns every split's score.

        Test and holdout always, in full (their calls were reserved; only retries can pass
        ``max_calls``); train when there is no call budget or what is left covers it
        (``None`` otherwise).
        """
        registry, env = self.registry, self.env
        versions = list(dict.fromkeys([live, baseline]))
        for split in (*REPORT_SPLITS, "train"):  # the reserved splits first, for both builds
            for version_id in versions:
                if split in registry.record(version_id).scores:
                    continue
                if split == "train" and not env.spend.affordable(
                    env.calls_to_score_version(version_id, split), reserve=0
                ):
                    continue
                with env.spend.unbudgeted():
                    env.score_version(version_id, split)
        return {
            version_id: {split: registry.record(version_id).scores.get(split) for split in SPLITS}
            for version_id in versions
        }
