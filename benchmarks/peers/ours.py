"""Our shipped policies on the same task, through our runner, counted through the same proxy.

Each run is ``selfimprove_rl.runner.run_experiment`` with the data set's shipped config
(``experiments/configs/<data set>.toml``) changed only where the benchmark must: the data is
the benchmark's checkpoint (exact match, same split), the backend is the proxy's ``target``
role, ``[target] model`` is the target's name, ``[env] max_calls`` is the call budget and the
step limit is raised so the budget, not the step count, ends a run (stagnation still may).

Target calls are the proxy's count when the loop ends (the runner's final train / test /
holdout report comes after and is counted as evaluation). Each promoted build is scored on
holdout by the benchmark's scorer (outside the budget) to give the curve from which "calls to
reach the best peer's score" is read.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers.common import NO_KEY_ENV, CurvePoint, RowResult, ScoredPrompt, Scorer, Task
from peers.counting_proxy import CountingProxy, ProxyCounts
from peers.targets import Target
from selfimprove_rl.config import load_config

REPO = Path(__file__).resolve().parents[2]
MAX_TOTAL_STEPS = 400


@dataclass(frozen=True)
class OurRow:
    """One of our rows: a row name, a policy and its kwargs (``coach`` needs a helper model)."""

    row: str
    policy: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    needs_coach: bool = False

    def policy_kwargs(self, target: Target, proxy: CountingProxy) -> dict[str, Any]:
        """The policy's kwargs with the coach pointed at the proxy's ``coach`` role."""
        coach = {
            "model": target.helper_model,
            "backend": {
                "kind": "openai",
                "base_url": proxy.base_url("coach"),
                "api_key_env": NO_KEY_ENV,
                "timeout_s": target.timeout_s,
            },
        }
        if self.policy == "llm_coach":
            return {**self.kwargs, **coach}
        if self.needs_coach:
            return {**self.kwargs, "proposer_kwargs": {"llm_coach": coach}}
        return dict(self.kwargs)


OUR_ROWS: dict[str, OurRow] = {
    row.row: row
    for row in (
        OurRow("rule_induction", "rule_induction"),
        OurRow("ucb1", "ucb1"),
        OurRow("thompson", "thompson"),
        OurRow("successive_halving", "successive_halving"),
        OurRow("population", "population"),
        OurRow("proposer_coach", "proposer_coach"),
        OurRow("random", "random"),
        OurRow("sb3", "sb3"),
        OurRow("llm_coach", "llm_coach", needs_coach=True),
        OurRow(
            "ucb1_mixed",
            "ucb1",
            {"proposer": "rule_induction+llm_coach"},
            needs_coach=True,
        ),
    )
}
"""Our rows by name; ``ucb1_mixed`` is a bandit over the rule-induction and LLM-coach proposers."""


class _Probe:
    """Runner callback: counts at the loop's end, holdout of every promoted build."""

    def __init__(self, proxy: CountingProxy, scorer: Scorer, task: Task, start: ProxyCounts):
        self.proxy = proxy
        self.scorer = scorer
        self.task = task
        self.start = start
        self.loop_end: ProxyCounts | None = None
        self.loop_started = time.perf_counter()
        self.loop_wall = 0.0
        self.scoring_s = 0.0
        self.curve: list[CurvePoint] = []
        self.scored: list[ScoredPrompt] = []
        self.final_action: Any = None

    def on_start(self, run: Any) -> None:
        self.loop_started = time.perf_counter()

    def on_promotion(self, run: Any, version_id: str, decision: Any) -> None:
        started = time.perf_counter()
        calls = (self.proxy.counts() - self.start).calls("target")
        action = run.registry.build(version_id).state.to_action(run.checkpoint.action)
        scored = self.scorer.score(f"promoted {version_id}", action, self.task.splits.holdout)
        test = run.registry.record(version_id).scores.get("test")
        self.curve.append(
            CurvePoint(
                calls=calls,
                holdout=scored.score,
                test=None if test is None else test.aggregate,
                label=version_id,
            )
        )
        self.scored.append(scored)
        self.scoring_s += time.perf_counter() - started

    def on_loop_end(self, run: Any, reason: str) -> None:
        self.loop_end = self.proxy.counts()
        self.loop_wall = time.perf_counter() - self.loop_started - self.scoring_s

    def on_finish(self, run: Any, summary: dict[str, Any]) -> None:
        live = run.registry.build(summary["promoted_version"])
        self.final_action = live.state.to_action(run.checkpoint.action)


def run_ours(
    spec: OurRow,
    task: Task,
    target: Target,
    proxy: CountingProxy,
    scorer: Scorer,
    *,
    seed: int,
    budget_calls: int,
    work_dir: Path,
    checkpoint_path: Path,
    seed_holdout: float | None,
) -> RowResult:
    """Run one of our policies through the runner and score what it promoted on holdout.

    Raises:
        ValueError: the row needs a coach model and the target has none.
    """
    from selfimprove_rl.runner import run_experiment

    if spec.needs_coach and target.helper_model is None:
        raise ValueError(f"{spec.row} needs a coach model; the simulated target has none.")
    config = load_config(REPO / "experiments" / "configs" / f"{task.dataset}.toml")
    config = config.with_overrides(
        **{
            "name": f"peers-{task.dataset}-{spec.row}",
            "seed": seed,
            "data": {"kind": "checkpoint", "path": str(checkpoint_path)},
            "backend": {
                "kind": target.backend_kind,
                "base_url": proxy.base_url("target"),
                "api_key_env": NO_KEY_ENV,
                "timeout_s": target.timeout_s,
            },
            "target.model": target.model,
            "policy": {"name": spec.policy, "kwargs": spec.policy_kwargs(target, proxy)},
            "env.max_calls": budget_calls,
            # Like the peers (GEPA keeps a candidate that scores higher on its validation set),
            # and because 32 test samples cannot certify a real model's 0.1-0.2 gains with the
            # sequential gate's anytime-valid bound: the whole test split decides.
            "gate.mode": "full_split",
            "stopping.max_total_steps": MAX_TOTAL_STEPS,
            "replay": {"concurrency": target.concurrency, "timeout_s": target.timeout_s},
        }
    )
    run_dir = work_dir / "run"
    if run_dir.exists():  # an unfinished earlier attempt: start over (the proxy cache is warm)
        shutil.rmtree(run_dir)
    start = proxy.counts()
    probe = _Probe(proxy, scorer, task, start)
    started = time.perf_counter()
    result = run_experiment(config, out=run_dir, progress=False, callbacks=[probe])
    total_wall = time.perf_counter() - started
    end = proxy.counts()
    loop_end = probe.loop_end or end
    loop = loop_end - start
    report = end - loop_end

    summary = result.summary
    final = scorer.score(
        f"ours {spec.row}: promoted build", probe.final_action, task.splits.holdout
    )
    curve = [CurvePoint(calls=0, holdout=seed_holdout, label="baseline"), *probe.curve]
    other = loop.calls() - loop.calls("target") - loop.calls("score")
    return RowResult(
        target=target.name,
        model=target.model,
        dataset=task.dataset,
        row=spec.row,
        kind="ours",
        seed=seed,
        budget_calls=budget_calls,
        holdout=final.score,
        holdout_source="replay",
        holdout_replay=final.score,
        target_calls=loop.calls("target"),
        other_calls=other,
        cached_calls=loop.calls(field="cached") - loop.calls("score", field="cached"),
        eval_calls=report.calls() + loop.calls("score"),
        wall_s=probe.loop_wall,
        curve=curve,
        prompts=[
            *probe.scored,
            *([final] if all(p.action != final.action for p in probe.scored) else []),
        ],
        details={
            "policy": spec.policy,
            "policy_kwargs": spec.kwargs,
            "coach_model": target.helper_model if spec.needs_coach else None,
            "runner_holdout": summary["holdout"],
            "runner_test": summary["test"],
            "runner_calls": summary["calls"],
            "steps": summary["steps"],
            "promotions": summary["promotions"],
            "stopped_because": summary["stopped_because"],
            "total_wall_s": total_wall,
            "run_dir": str(run_dir),
        },
    )
