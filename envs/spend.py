"""What has an env spent, may it spend more, and how does the count survive a kill?

:class:`SpendMeter` keeps a :class:`~envs.prompt_env.PromptEnv`'s accounts: model calls
(replay and judge), tokens, cache hits, failed samples and retried requests, and the failures
by reason. It enforces the call budget (``max_calls``): ``may_call`` is the replayer's call
guard, asked before every request (retries included), and refuses once what was sent plus
``reserved_calls`` (held back by a caller, e.g. the final report) reaches ``max_calls``;
``unbudgeted()`` lets a report that must be complete through, still counted.

Across processes: :meth:`SpendMeter.state` is saved with each committed step and
:meth:`SpendMeter.restore` continues from it. What the response cache's ledger recorded after
the saved position was paid by a process killed before it could save again: a response it
paid for is charged to the first replay that uses it (``Replayer.prepaid``), exactly as an
uninterrupted run would have paid for it; a request that failed is charged at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from selfimprove_rl.cache import Payment
from selfimprove_rl.checkpoint import Sample
from selfimprove_rl.evals import EvalItem, Evaluator
from selfimprove_rl.replay import Replayer

_CHARGED = ("calls", "replay_calls", "retries", "tokens", "failures")


class SpendMeter:
    """The spend accounts and call budget of one env.

    Args:
        replayer: the env's replayer (its usage, failure counters, cache and ledger).
        evaluators: the env's evaluators; those with ``calls``/``errors`` counters are judges.
        max_calls: the hard call budget (``None``: unlimited).
        max_tokens: the token budget, checked between steps (``None``: unlimited).

    Attributes:
        reserved_calls: calls held back from steps for a caller's later work.
        refused: why a step was refused for want of budget (``None`` until one was).
    """

    def __init__(
        self,
        replayer: Replayer,
        evaluators: Sequence[Evaluator],
        *,
        max_calls: int | None,
        max_tokens: int | None,
    ) -> None:
        self.replayer = replayer
        self.evaluators = list(evaluators)
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.reserved_calls = 0
        self.refused: str | None = None
        self._ceiling: float | None = None
        self._offset: dict[str, int] = {}
        self._reason_offset: dict[str, dict[str, int]] = {}
        replayer.call_guard = self.may_call

    # ------------------------------------------------------------------ counters
    def _judge(self, counter: str) -> int:
        return sum(int(getattr(evaluator, counter, 0)) for evaluator in self.evaluators)

    def _live(self) -> dict[str, int]:
        replay = self.replayer.usage
        judge_calls = self._judge("calls")
        return {
            "replay_calls": replay.calls,
            "judge_calls": judge_calls,
            "calls": replay.calls + judge_calls,
            "tokens": replay.prompt_tokens + replay.completion_tokens,
            "cache_hits": replay.cache_hits,
            "failures": replay.failures,
            "retries": replay.retries,
            "judge_errors": self._judge("errors"),
        }

    @property
    def usage(self) -> dict[str, int]:
        """Everything sent so far (cache hits excluded), across processes.

        Keys: ``calls`` (``replay_calls`` + ``judge_calls``), ``tokens``, ``cache_hits``,
        ``failures`` (samples), ``retries`` (requests), ``judge_errors``.
        """
        return {key: value + self._offset.get(key, 0) for key, value in self._live().items()}

    @property
    def failure_reasons(self) -> dict[str, dict[str, int]]:
        """Failed samples (``samples``) and failed requests (``attempts``), each by reason."""
        live = {
            "samples": dict(self.replayer.failed_samples),
            "attempts": dict(self.replayer.failed_attempts),
        }
        merged: dict[str, dict[str, int]] = {}
        for kind, counts in live.items():
            total = dict(self._reason_offset.get(kind, {}))
            for reason, count in counts.items():
                total[reason] = total.get(reason, 0) + count
            merged[kind] = dict(sorted((k, v) for k, v in total.items() if v))
        return merged

    def hide_cache_hits(self, count: int) -> None:
        """Take ``count`` cache hits off the books (bookkeeping replays, not spend)."""
        self._offset["cache_hits"] = self._offset.get("cache_hits", 0) - count

    # ------------------------------------------------------------------ the budget
    def calls_now(self) -> int:
        """Calls sent so far, requests in flight included (what the guard compares)."""
        return self.replayer.calls_sent + self._judge("calls") + self._offset.get("calls", 0)

    def may_call(self) -> bool:
        """The replayer's call guard: whether one more request fits the budget."""
        if self.max_calls is None:
            return True
        ceiling = self._ceiling
        if ceiling is None:
            ceiling = self.max_calls - self.reserved_calls
        return self.calls_now() < ceiling

    @contextmanager
    def unbudgeted(self) -> Iterator[None]:
        """Let every request through (still counted): for a report that must be complete."""
        previous, self._ceiling = self._ceiling, math.inf
        try:
            yield
        finally:
            self._ceiling = previous

    def affordable(self, calls: int, *, reserve: int | None = None) -> bool:
        """Whether ``calls`` more fit the budget.

        ``reserve`` (default ``reserved_calls``) stays held back on top.
        """
        if self.max_calls is None:
            return True
        held = self.reserved_calls if reserve is None else reserve
        return self.usage["calls"] + calls + held <= self.max_calls

    def token_refusal(self) -> str | None:
        """Why no step may start for want of tokens (``None``: it may)."""
        tokens = self.usage["tokens"]
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return f"token budget spent: {tokens} of max_tokens={self.max_tokens}"
        return None

    def call_refusal(self, needed: int) -> str | None:
        """Why a step needing up to ``needed`` calls may not start (``None``: it may)."""
        if self.affordable(needed):
            return None
        assert self.max_calls is not None
        left = self.max_calls - self.usage["calls"] - self.reserved_calls
        return (
            f"call budget: the step needs up to {needed} calls, {max(left, 0)} are left of "
            f"max_calls={self.max_calls} after {self.reserved_calls} reserved"
        )

    def exhausted(self) -> bool:
        """Whether the call or token budget is spent (or a step was refused for want of it).

        The call budget counts as spent once only ``reserved_calls`` are left.
        """
        if self.refused is not None or self.token_refusal() is not None:
            return True
        return self.max_calls is not None and (
            self.usage["calls"] + self.reserved_calls >= self.max_calls
        )

    # ------------------------------------------------------------------ across processes
    def state(self) -> dict[str, Any]:
        """The counters and the cache ledger's position, JSON-serialisable."""
        return {
            "usage": self.usage,
            "failure_reasons": self.failure_reasons,
            "ledger_seq": self.replayer.cache.ledger_seq,
            "prepaid": [list(payment) for payment in self.replayer.prepaid.values()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the counters of :meth:`state`, saved by another process (module docstring)."""
        target = {key: int(value) for key, value in dict(state.get("usage", {})).items()}
        prepaid = {
            payment.key: payment
            for payment in (Payment(*row) for row in state.get("prepaid", []))
            if payment.key is not None
        }
        for payment in self.replayer.cache.payments_since(int(state.get("ledger_seq", 0))):
            if payment.key is not None:
                prepaid[payment.key] = payment
                continue
            for key, amount in _charges(payment, failed=True).items():
                target[key] = target.get(key, 0) + amount
        self.replayer.prepaid = prepaid
        live = self._live()
        self._offset = {key: target.get(key, 0) - live[key] for key in live}
        saved_reasons = dict(state.get("failure_reasons", {}))
        self._reason_offset = {}
        for kind, counts in (
            ("samples", self.replayer.failed_samples),
            ("attempts", self.replayer.failed_attempts),
        ):
            saved = {str(k): int(v) for k, v in dict(saved_reasons.get(kind, {})).items()}
            self._reason_offset[kind] = {
                reason: saved.get(reason, 0) - counts.get(reason, 0)
                for reason in set(saved) | set(counts)
            }

    def settle_prepaid(self) -> int:
        """Charge now what prepaid responses no replay has used; returns those calls."""
        leftover = list(self.replayer.prepaid.values())
        self.replayer.prepaid = {}
        for payment in leftover:
            for key, amount in _charges(payment, failed=False).items():
                self._offset[key] = self._offset.get(key, 0) + amount
        return sum(payment.calls for payment in leftover)


def _charges(payment: Payment, *, failed: bool) -> dict[str, int]:
    """What one ledger entry adds to the counters."""
    charges = {
        "calls": payment.calls,
        "replay_calls": payment.calls,
        "retries": payment.calls - 1,
        "tokens": payment.prompt_tokens + payment.completion_tokens,
    }
    if failed:
        charges["failures"] = 1
    return charges


def judge_calls_bound(
    evaluators: Sequence[Evaluator], samples: Sequence[Sample], texts: Sequence[str | None]
) -> int:
    """The most calls the judges among ``evaluators`` send to score ``texts`` (retries aside).

    A judge is an evaluator with a ``calls`` counter. For an output already known, its
    ``pending_calls(items)`` says whether the verdict is cached (one call per item when it
    has no such method); an output not known yet (``None``) costs one call per judge.
    """
    known = [EvalItem(s, t) for s, t in zip(samples, texts, strict=True) if t is not None]
    unknown = len(samples) - len(known)
    calls = 0
    for evaluator in evaluators:
        if not hasattr(evaluator, "calls"):
            continue
        pending = getattr(evaluator, "pending_calls", None)
        calls += unknown + (int(pending(known)) if pending is not None else len(known))
    return calls


NO_SPEND: dict[str, int] = {"requests": 0, "tokens": 0}
"""A step's ``info["spend"]`` when it replayed nothing (a no-op, invalid or refused step)."""


def add_spend(total: dict[str, int], step: dict[str, int]) -> dict[str, int]:
    """Return ``total`` plus one step's ``info["spend"]`` (what ``info["spend_episode"]`` sums).

    Example:
        >>> add_spend({"requests": 16, "tokens": 900}, {"requests": 8, "tokens": 400})
        {'requests': 24, 'tokens': 1300}
    """
    return {key: int(total.get(key, 0)) + int(step.get(key, 0)) for key in {**total, **step}}
