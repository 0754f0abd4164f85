"""How does an experiment run? Checkpoint → env → policy → gate → report, in a run directory.

The workflow: load (or fetch) the checkpoint, build the env by registered id and the policy
by name, then step: the policy acts, the env replays and rewards, and every version that
beat its base on the minibatch is put to the promotion gate (by default the sequential gate
of :mod:`selfimprove_rl.gate`: candidate and live build scored on paired test samples until an
anytime-valid bound decides). The run stops on the step budget, on stagnation (no promotion
for a while), on a test threshold (the live build's test estimate, see
:meth:`~selfimprove_rl.registry.Registry.test_estimate`), when the gate could promote nothing
more (even a candidate perfect on every test sample would not clear it: see
:func:`~selfimprove_rl.gate.promotion_ceiling`), or when the call budget is spent;
the live and the baseline build are then scored on the whole test and holdout splits for the
report. Everything lands in the run directory:

``config.json`` (resolved config; written last when a run starts, so a start that fails
leaves a directory a new start may reuse), ``checkpoint.json``, ``steps.jsonl`` (one line per
env step), ``versions.jsonl`` (the registry's event log), ``run_state.json`` (the commit record
a killed run resumes from, see :mod:`selfimprove_rl.run_state`), ``cache.sqlite`` (every
response paid for, with the ledger of what it cost), ``curves.csv``, ``reward_curve.png``,
``final_prompt.txt``, ``prompt.diff``, ``summary.json``.

The env is any registered env with versions, as :class:`~envs.prompt_env.PromptEnv` and
:class:`~envs.program_env.ProgramEnv` are: ``registry``, ``evaluators``, ``usage``,
``budget_exhausted()``, ``score_version(version_id, split)``, ``spend`` (an
:class:`~envs.spend.SpendMeter`), ``calls_to_score_version(version_id, split)``,
``reset_calls_bound()``, ``state_dict()`` and ``reset(options={"restore": ...})``; it may
also diff two versions its own way (``version_diff(before_id, after_id)``, for
``prompt.diff``).

**Resume is exact.** ``resume=True`` brings the directory back to its last commit and
continues from there with the saved policy memory, env episode and spend counters: a run
killed at any moment (``kill -9``) and resumed ends with the same steps, versions, final
prompt and calls as one that was never interrupted (against a deterministic backend; judge
verdicts are not persisted, so a classifier eval may re-judge outputs after a resume). A
finished run is reported as it is, without rewriting its summary, unless the stopping rule
(as configured now; a budget stop always stands) allows more steps.

**The call budget is hard** (``[env] max_calls``): every call counts (replay, gate, final
report, judge), and the run holds back what the final report will need: the promoted and the
baseline build on test and holdout, where not yet scored (worked out from the response
cache). A step or a gate that would eat into that reserve is not started; the run stops and
says so. The report then always scores test and holdout in full; it can only pass
``max_calls`` when retries of failed requests ate the reserve, and ``summary.json`` states
any overrun (``budget_overrun``). The train split is scored for the report only when what is
left covers it (always without a budget); otherwise ``train`` is ``null``. A budget too small
for even the baseline's report is refused before any call.

**Systemic failures end the run**: a backend that fails request after request raises
:class:`~selfimprove_rl.errors.BackendUnavailableError` (thresholds in ``[replay]``), and the
directory keeps everything committed, for ``--resume`` once the backend is fixed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Checkpoint
from selfimprove_rl.config import ExperimentConfig, parse_config
from selfimprove_rl.errors import BackendUnavailableError, ConfigError
from selfimprove_rl.fileio import append_jsonl, atomic_write_text
from selfimprove_rl.gate import promotion_ceiling, sequential_gate
from selfimprove_rl.hooks import Integrations, RunCallback
from selfimprove_rl.prompt import diff
from selfimprove_rl.registry import GateDecision, Registry, SplitScore
from selfimprove_rl.report_budget import SPLITS, ReportBudget
from selfimprove_rl.run_state import (
    RUN_STATE_FILE,
    LiveTestScores,
    RunState,
    finished,
    reconcile,
    save_run_state,
)

RUN_FILES = (
    "config.json",
    "checkpoint.json",
    "steps.jsonl",
    "versions.jsonl",
    RUN_STATE_FILE,
    "cache.sqlite",
    "curves.csv",
    "reward_curve.png",
    "final_prompt.txt",
    "prompt.diff",
    "summary.json",
)
# What a start that failed before config.json was written may leave; a new start removes it.
_RESTARTABLE = frozenset(RUN_FILES) | {"phoenix.json", "cache.sqlite-wal", "cache.sqlite-shm"}


class RunResult(BaseModel):
    """Where a run's files are and what it achieved."""

    model_config = ConfigDict(frozen=True)

    run_dir: Path
    summary: dict[str, Any]


def run_dir_name(config: ExperimentConfig, now: datetime | None = None) -> str:
    """Return ``<experiment>-<policy>-s<seed>-<UTC time>``, safe as a folder name."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    policy = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.policy.name)
    return f"{config.name}-{policy}-s{config.seed}-{stamp}"


def load_checkpoint_for(
    config: ExperimentConfig,
    *,
    progress: bool = True,
    integrations: Integrations | None = None,
) -> Checkpoint:
    """Load or fetch the checkpoint a config's data section names (``progress``: fetch bars).

    Raises:
        ConfigError: the data kind lives in an outside system (``phoenix``) that
            ``integrations`` does not wire.
    """
    data = config.data
    if data.kind == "checkpoint":
        return Checkpoint.load(data.path)
    fetcher = (integrations or Integrations()).fetchers.get(data.kind)
    if fetcher is not None:
        return fetcher(data, progress=progress)
    if data.kind == "phoenix":
        raise ConfigError(
            "Expects a Phoenix fetcher for [data] kind = 'phoenix', got integrations without "
            "one. Run it with `selfimprove-rl run`, or pass "
            "integrations=selfimprove_rl.telemetry.phoenix_integrations() to run_experiment."
        )
    from selfimprove_rl.mimic import load_dataset, load_mimic_jsonl

    model = config.target.model or "sim-large"
    if data.kind == "pipeline":
        from selfimprove_rl.program_data import load_pipeline, load_pipeline_file

        if data.path.endswith(".json"):
            return load_pipeline_file(data.path, model=model)
        return load_pipeline(data.path, model=model)
    if data.kind == "mimic":
        return load_mimic_jsonl(data.path, model=model)
    return load_dataset(data.path, model=model)


class ExperimentRunner:
    """Runs one experiment config into one run directory.

    Args:
        config: the experiment.
        run_dir: the run directory (created; with ``resume`` it must hold ``config.json``).
        resume: continue the run in ``run_dir``.
        progress: show a progress bar.
        callbacks: side-effect hooks (see :class:`~selfimprove_rl.hooks.RunCallback`).
        integrations: fetchers of outside data kinds (see
            :class:`~selfimprove_rl.hooks.Integrations`).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        progress: bool = True,
        callbacks: Sequence[RunCallback] = (),
        integrations: Integrations | None = None,
    ) -> None:
        self.config = config
        self.integrations = integrations or Integrations()
        self.run_dir = run_dir
        self.resume = resume
        self.progress = progress
        self.callbacks = list(callbacks)
        self.steps: list[dict[str, Any]] = []
        self.checkpoint: Checkpoint | None = None
        self.env: Any = None
        self.policy: Any = None
        self.backend = config.backend
        self.cache: ResponseCache | None = None
        self.stop_reason = ""
        self.episode = 0
        self.episode_step = 0
        self._state: RunState | None = None
        self._mark: dict[str, int] = {}
        self._live_test: LiveTestScores | None = None

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        config_path = self.run_dir / "config.json"
        if self.resume:
            if not config_path.exists():
                raise ConfigError(
                    f"Cannot resume: {self.run_dir} holds no config.json (no run finished "
                    "starting there). Start the run again without --resume."
                )
            # The run continues under the config it started with, whatever was passed.
            self.config = parse_config(json.loads(config_path.read_text()), source=str(config_path))
            self.checkpoint = Checkpoint.load(self.run_dir / "checkpoint.json")
            self._state, self.steps = reconcile(self.run_dir)
            self._live_test = self._state.live_test if self._state is not None else None
        else:
            self._claim_run_dir()
            self.checkpoint = load_checkpoint_for(
                self.config, progress=self.progress, integrations=self.integrations
            )
            self.checkpoint.save(self.run_dir / "checkpoint.json")

    def _claim_run_dir(self) -> None:
        """Create the run directory, or reuse one a failed start left without config.json."""
        if self.run_dir.exists():
            if (self.run_dir / "config.json").exists():
                raise ConfigError(
                    f"{self.run_dir} holds a run; pass --resume to continue it, or choose "
                    "another --out."
                )
            entries = list(self.run_dir.iterdir())
            foreign = [
                p.name
                for p in entries
                if not p.is_file() or (p.name not in _RESTARTABLE and not p.name.startswith("."))
            ]
            if foreign:
                raise ConfigError(
                    f"{self.run_dir} is not empty (it holds {sorted(foreign)[:3]}) and is not a "
                    "run directory; choose another --out, or pass --resume to continue a run."
                )
            for path in entries:
                path.unlink()  # what a start that failed before it finished initialising left
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _build_env(self) -> Any:
        import gymnasium

        import envs  # noqa: F401  (registers the env ids)
        from selfimprove_rl.evals.factory import build_evaluators

        assert self.checkpoint is not None
        constants = [
            c.model_copy(
                update={
                    "weight": self.config.evals.weights.get(c.name, c.weight),
                    "eval_model": self.config.evals.judge_model or c.eval_model,
                }
            )
            for c in self.checkpoint.eval_constants
        ]
        model = self.config.target.model or self.checkpoint.action.model
        evaluators = build_evaluators(
            constants,
            judge_llm_kwargs=self.backend.phoenix_llm_kwargs(),
            target_model=model,
        )
        env_options = dict(self.config.env)
        if self.config.target.allowed_models:
            env_options["allowed_models"] = tuple(self.config.target.allowed_models)
        self.cache = ResponseCache(self.run_dir / "cache.sqlite")
        env = gymnasium.make(
            self.config.env_id,
            data=self.checkpoint,
            model=model,
            backend=self.backend,
            evaluators=evaluators,
            config=env_options,
            registry=Registry(self.run_dir / "versions.jsonl"),
            cache=self.cache,
            replay_config=self.config.replay,
            max_episode_steps=_episode_steps(env_options),
        )
        return env

    def _build_policy(self) -> Any:
        from policies.catalog import make_policy

        return make_policy(
            self.config.policy.name, seed=self.config.seed, **self.config.policy.kwargs
        )

    # ------------------------------------------------------------------ budget
    @property
    def registry(self) -> Registry:
        """The run's version registry."""
        registry: Registry = self.env.unwrapped.registry
        return registry

    @property
    def budget(self) -> ReportBudget:
        """The call-budget rules around the final report (see :mod:`report_budget`)."""
        return ReportBudget(self.env.unwrapped)

    # ------------------------------------------------------------------ the gate
    def _ensure_test_score(self, version_id: str) -> SplitScore:
        record = self.registry.record(version_id)
        if "test" in record.scores:
            return record.scores["test"]
        score, _ = self.env.unwrapped.score_version(version_id, "test")
        return score

    def _gate(self, version_id: str) -> tuple[GateDecision | None, str | None]:
        """Put a candidate to the gate (once per version); see :mod:`selfimprove_rl.gate`.

        Returns:
            The decision (``None`` when there was nothing to gate), and why the budget stopped
            the gate (``None`` when it did not: then the run goes on).
        """
        registry, unwrapped = self.registry, self.env.unwrapped
        live_id = registry.live_id
        if version_id == live_id or any(d.candidate_id == version_id for d in registry.decisions):
            return None, None
        gate = self.config.gate
        if gate.mode == "sequential":
            reserve = self.budget.gate_reserve(version_id)
            unwrapped.spend.reserved_calls = reserve
            outcome = sequential_gate(
                unwrapped, version_id, gate, seed=self.config.seed, reserve=reserve
            )
            if outcome.decision is None:
                return None, outcome.refusal
            decision, refusal = outcome.decision, outcome.refusal
        else:
            reserve, refusal = self.budget.gate_refusal(version_id)
            if refusal is not None:
                return None, refusal
            unwrapped.spend.reserved_calls = reserve
            self._ensure_test_score(live_id)
            self._ensure_test_score(version_id)
            decision = registry.gate(version_id, gate)
        if decision.promoted:
            for callback in self.callbacks:
                callback.on_promotion(self, version_id, decision)
        return decision, refusal

    def _should_gate(self, info: dict[str, Any], reward: float) -> bool:
        return (
            info["invalid_edit"] is None
            and info["version_id"] != info["base_version_id"]
            and reward > 0
        )

    # ------------------------------------------------------------------ commit and resume
    def _commit(self, line: dict[str, Any] | None, info: dict[str, Any] | None = None) -> None:
        """Commit a step: the run state first (atomic), then the step line (see run_state)."""
        unwrapped = self.env.unwrapped
        spend = unwrapped.spend.state()
        state = RunState(
            step=len(self.steps) + (line is not None),
            episode=self.episode,
            episode_step=self.episode_step,
            registry_events=self.registry.events,
            env=unwrapped.state_dict(),
            policy=self.policy.state_dict(),
            spend=spend,
            line=line,
            info=info,
            live_test=self._live_test,
        )
        save_run_state(self.run_dir, state)
        self._state = state
        self._mark = dict(spend["usage"])
        self._stage("saved")
        if line is not None:
            append_jsonl(self.run_dir / "steps.jsonl", line)
            self.steps.append(line)
            self._stage("logged")

    def _start(self) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """Start the first episode, or continue at the last commit.

        Returns:
            The observation, the info the next action sees, and whether a new episode must
            start before the next step.
        """
        env, unwrapped = self.env, self.env.unwrapped
        state = self._state
        if state is None:
            if self.resume:
                unwrapped.spend.restore({"ledger_seq": 0})  # what a killed start paid
            self.episode, self.episode_step = 0, 0
            self._notify("on_episode_start", 0)
            observation, info = env.reset(seed=self._episode_seed(0))
            self.policy.reset(observation, info)
            self._commit(None, info=info)
            return observation, info, False
        self.policy.load_state_dict(state.policy)
        unwrapped.spend.restore(state.spend)
        self._mark = {key: int(value) for key, value in state.spend["usage"].items()}
        self.episode, self.episode_step = state.episode, state.episode_step
        self._notify("on_episode_start", self.episode)
        observation, _ = env.reset(options={"restore": state.env})
        last = state.line
        info = last["info"] if last is not None else (state.info or {})
        ended = last is not None and bool(last["terminated"] or last["truncated"])
        return observation, info, ended

    # ------------------------------------------------------------------ the loop
    def _rule_stop(self, registry: Registry) -> str:
        """Why the stopping rule ends the run, from the step log, registry and config alone."""
        stopping = self.config.stopping
        if self.steps and self.steps[-1].get("budget_stop"):
            return str(self.steps[-1]["budget_stop"])
        if len(self.steps) >= stopping.max_total_steps:
            return f"reached max_total_steps={stopping.max_total_steps}"
        since_promotion = self._steps_since_promotion()
        if stopping.stagnation_steps is not None and since_promotion >= stopping.stagnation_steps:
            return f"no promotion in {since_promotion} steps (stagnation_steps)"
        live = registry.test_estimate(registry.live_id)
        threshold = stopping.test_threshold
        if threshold is not None and live is not None and live.aggregate >= threshold:
            return f"live build test score {live.aggregate:.4f} (n={live.n}) >= {threshold}"
        return ""

    def _stop_reason(self, needs_reset: bool) -> tuple[str, bool]:
        """Why the run ends before the next step (``""``: it goes on), and whether by budget.

        A budget stop is kept by a resume (the spend moves on once the report is scored); a
        rule's stop is checked again against the config as it is then.
        """
        self._confirm_threshold()
        reason = self._rule_stop(self.registry) or self._ceiling_stop(self.registry)
        if reason:
            return reason, False
        unwrapped = self.env.unwrapped
        unwrapped.spend.reserved_calls = self.budget.reserve()
        if unwrapped.budget_exhausted():
            return (
                f"call/token budget spent: {unwrapped.usage['calls']} calls of max_calls="
                f"{unwrapped.config.max_calls} with {unwrapped.spend.reserved_calls} reserved "
                "for the final report"
            ), True
        refusal = self.budget.reset_refusal() if needs_reset else None
        if refusal is not None:
            return refusal, True
        for callback in self.callbacks:
            asked = getattr(callback, "should_stop", None)
            reason = asked(self) if asked is not None else ""
            if reason:
                return str(reason), False
        return "", False

    def _confirm_threshold(self) -> None:
        """Score the live build on the whole test split before a partial estimate stops the run.

        A sequential gate may promote on a few test samples (1.0 on 16 is no evidence of 0.98);
        the ``test_threshold`` rule stops only on the whole split's score. The calls count
        towards the run, and the final report reuses the score rather than replaying it.
        """
        threshold = self.config.stopping.test_threshold
        live_id = self.registry.live_id
        live = self.registry.test_estimate(live_id)
        if threshold is None or live is None or live.aggregate < threshold:
            return
        if live.n >= len(self.env.unwrapped.splits.test):
            return
        self._ensure_test_score(live_id)

    def _ceiling_stop(self, registry: Registry) -> str:
        """Why the gate could promote nothing more (``""``: it could); see ``promotion_ceiling``.

        Checked once something was promoted: the live build is scored on the whole test split
        once (the final report reuses the score) and its per-sample scores are committed with
        the run state, so a resumed run decides alike without scoring again.
        """
        if not self.config.stopping.when_gate_cannot_promote:
            return ""
        live_id = registry.live_id
        if registry.build(live_id).parent_id is None:
            return ""
        if self._live_test is None or self._live_test.version_id != live_id:
            if self.env is None:
                return ""
            unwrapped = self.env.unwrapped
            if "test" in registry.record(live_id).scores:
                _, table = unwrapped.evaluate_version(live_id, "test")
            else:
                _, table = unwrapped.score_version(live_id, "test")
            self._live_test = LiveTestScores(
                version_id=live_id, per_sample=tuple(table.per_sample())
            )
        reason = promotion_ceiling(
            self._live_test.per_sample, registry, self.config.gate, seed=self.config.seed
        )
        return f"the gate cannot promote: {reason}" if reason else ""

    def _still_stopped(self, registry: Registry) -> bool:
        """On resume: whether the saved stop holds.

        A budget stop always does; a rule's if the config, as it is now, still says stop.
        """
        state = self._state
        if state is None or not state.stop_reason:
            return False
        return state.stop_by_budget or bool(
            self._rule_stop(registry) or self._ceiling_stop(registry)
        )

    def _episode_seed(self, episode: int) -> int:
        return self.config.seed * 1000 + episode

    def _loop(self) -> None:
        from policies.base import Transition

        env = self.env
        unwrapped = env.unwrapped
        observation, info, needs_reset = self._start()
        assert self._state is not None
        stopped = self._state.stop_reason if self._still_stopped(self.registry) else ""
        by_budget = self._state.stop_by_budget
        bar = self._progress_bar() if not stopped else None
        while True:
            if stopped:
                reason = stopped
                break
            reason, by_budget = self._stop_reason(needs_reset)
            if reason:
                break
            if needs_reset:
                self.episode, self.episode_step = self.episode + 1, 0
                self._notify("on_episode_start", self.episode)
                observation, info = env.reset(seed=self._episode_seed(self.episode))
                self.policy.reset(observation, info)
                self._stage("reset")
            self._notify("on_step_start", len(self.steps) + 1)
            action = self.policy.act(observation, info)
            next_observation, reward, terminated, truncated, info = env.step(action)
            self._stage("stepped")
            before_gate = unwrapped.usage
            decision, skipped = (
                self._gate(info["version_id"]) if self._should_gate(info, reward) else (None, None)
            )
            self._stage("gated")
            self.episode_step += 1
            line = self._step_line(reward, terminated, truncated, info, decision, before_gate)
            line["budget_stop"] = info.get("budget_refusal") or skipped
            self.policy.update(
                Transition(
                    observation, action, reward, next_observation, terminated, truncated, info
                )
            )
            self._commit(line)
            self._notify("on_step_end", line)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{reward:+.3f}", live=self.registry.live_id)
            observation = next_observation
            needs_reset = terminated or truncated
        if bar is not None:
            bar.close()
        if not stopped:
            self._state = self._state.model_copy(
                update={
                    "stop_reason": reason,
                    "stop_by_budget": by_budget,
                    "live_test": self._live_test,
                }
            )
            save_run_state(self.run_dir, self._state)
        self.stop_reason = reason
        self._notify("on_loop_end", reason)

    def _notify(self, hook: str, *args: Any) -> None:
        """Call an optional hook (see :class:`RunCallback`) on the callbacks that define it."""
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)

    def _stage(self, stage: str) -> None:
        self._notify("on_stage", stage)

    def _steps_since_promotion(self) -> int:
        count = 0
        for line in reversed(self.steps):
            if line["gate"] and line["gate"]["promoted"]:
                break
            count += 1
        return count

    def _progress_bar(self) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.config.stopping.max_total_steps,
            initial=len(self.steps),
            desc=f"{self.config.policy.name}",
            unit="step",
        )

    def _step_line(
        self,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict[str, Any],
        decision: GateDecision | None,
        before_gate: dict[str, int],
    ) -> dict[str, Any]:
        """Return the step's log line.

        ``calls`` counts everything since the previous commit (an episode reset included, and
        the gate, also given alone as ``gate_calls``).
        """
        live_id = self.registry.live_id
        live_test = self.registry.test_estimate(live_id)
        usage, mark = self.env.unwrapped.usage, self._mark
        return {
            "step": len(self.steps) + 1,
            "episode": self.episode,
            "episode_step": self.episode_step,
            "directive": info["directive"],
            "base_version": info["base_version_id"],
            "version_id": info["version_id"],
            "current_version": info["current_version_id"],
            "reward": reward,
            "accepted": info["accepted"],
            "invalid_edit": info["invalid_edit"],
            "scores": info["scores"],
            "base_scores": info["base_scores"],
            "calls": usage["calls"] - mark.get("calls", 0),
            "gate_calls": usage["calls"] - before_gate["calls"],
            "tokens": usage["tokens"] - mark.get("tokens", 0),
            "failures": usage["failures"] - mark.get("failures", 0),
            "retries": usage["retries"] - mark.get("retries", 0),
            "cumulative_calls": usage["calls"],
            "cumulative_tokens": usage["tokens"],
            "gate": None if decision is None else decision.model_dump(mode="json"),
            "live_version": live_id,
            "live_test": None if live_test is None else live_test.aggregate,
            "terminated": terminated,
            "truncated": truncated,
            "info": info,
        }

    # ------------------------------------------------------------------ report
    def _finish(self) -> dict[str, Any]:
        from selfimprove_rl.report import write_curves, write_reward_plot

        unwrapped = self.env.unwrapped
        registry = self.registry
        live_id, baseline_id = registry.live_id, registry.baseline_id
        before = self._mark  # the spend at the last commit: a redone report counts in full
        scores = self.budget.score_report(live_id, baseline_id)
        unwrapped.spend.settle_prepaid()  # paid by a killed process, never reused: still spent
        self._stage("reported")
        usage = unwrapped.usage
        live = registry.build(live_id)
        baseline = registry.build(baseline_id)
        atomic_write_text(self.run_dir / "final_prompt.txt", live.state.render() + "\n")
        version_diff = getattr(unwrapped, "version_diff", None)
        atomic_write_text(
            self.run_dir / "prompt.diff",
            (
                version_diff(baseline_id, live_id)
                if version_diff is not None
                else diff(baseline.state, live.state, name="system_prompt")
            )
            + "\n",
        )
        ends = {
            "baseline_test": _aggregate(scores[baseline_id]["test"]),
            "live_test": _aggregate(scores[live_id]["test"]),
            "live_version": live_id,
            "report_calls": usage["calls"] - before["calls"],
            "calls": usage["calls"],
            "tokens": usage["tokens"],
        }
        write_curves(self.steps, self.run_dir / "curves.csv", **ends)
        write_reward_plot(
            self.steps, self.run_dir / "reward_curve.png", title=self.config.name, **ends
        )
        max_calls = unwrapped.config.max_calls
        reasons = unwrapped.spend.failure_reasons
        assert self.checkpoint is not None
        summary: dict[str, Any] = {
            "experiment": self.config.name,
            "run_dir": str(self.run_dir),
            "policy": self.config.policy.name,
            "seed": self.config.seed,
            "backend": self.config.backend.describe(),
            "model": live.state.model,
            "data": self.checkpoint.provenance.model_dump(mode="json", exclude_none=True),
            "promoted_version": live_id,
            "baseline_version": baseline_id,
            **{split: _aggregate(scores[live_id][split]) for split in SPLITS},
            "per_eval": {split: _per_eval(scores[live_id][split]) for split in SPLITS},
            "n": {split: _count(scores[live_id][split]) for split in SPLITS},
            "baseline": {split: _aggregate(scores[baseline_id][split]) for split in SPLITS},
            "calls": usage["calls"],
            "replay_calls": usage["replay_calls"],
            "judge_calls": usage["judge_calls"],
            "report_calls": usage["calls"] - before["calls"],
            "max_calls": max_calls,
            "budget_overrun": max(0, usage["calls"] - max_calls) if max_calls is not None else 0,
            "tokens": usage["tokens"],
            "cache_hits": usage["cache_hits"],
            "failures": usage["failures"],
            "retries": usage["retries"],
            "failures_by_reason": reasons["samples"],
            "failed_requests_by_reason": reasons["attempts"],
            "judge_errors": usage["judge_errors"],
            "steps": len(self.steps),
            "versions": len(registry),
            "promotions": len(registry.promoted_ids) - 1,
            "stopped_because": self.stop_reason,
        }
        policy_report = getattr(self.policy, "report", None)  # e.g. the LLM coach's reply counts
        if callable(policy_report):
            summary["policy_report"] = policy_report()
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        for callback in self.callbacks:
            callback.on_finish(self, summary)
        return summary

    def run(self) -> RunResult:
        """Run (or resume) the experiment and return where its files are.

        Raises:
            selfimprove_rl.errors.SelfImproveError: a configuration, data or backend problem
                (the message says which and how to fix it); files written so far are kept
                for ``--resume``.
            selfimprove_rl.errors.BackendUnavailableError: the backend failed systemically;
                the message says how to continue once it is fixed.
        """
        self._prepare()
        if (
            self.resume
            and finished(self.run_dir, self._state)
            and self._still_stopped(Registry(self.run_dir / "versions.jsonl"))
        ):
            assert self._state is not None
            self.stop_reason = self._state.stop_reason
            summary = json.loads((self.run_dir / "summary.json").read_text(encoding="utf-8"))
            return RunResult(run_dir=self.run_dir, summary=summary)
        # A local model server (backend kind "local_llm") runs for the duration of the run.
        with self.config.backend.serving() as backend:
            self.backend = backend
            return self._run_prepared()

    def _run_prepared(self) -> RunResult:
        error: BaseException | None = None
        try:
            self.env = self._build_env()
            self.policy = self._build_policy()
            self._notify("on_start")
            if not self.resume:
                self.budget.check_start()
                # Written last: until here, a failed start leaves a directory a new start reuses.
                atomic_write_text(
                    self.run_dir / "config.json", self.config.model_dump_json(indent=2)
                )
            self._loop()
            summary = self._finish()
        except BackendUnavailableError as exc:
            error = exc
            exc.args = (
                f"{exc} The run directory {self.run_dir} keeps every committed step: fix the "
                f"backend, then continue with --resume --out {self.run_dir}.",
            )
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                if self.env is not None:
                    self._notify("on_close", error)
            finally:
                if self.env is not None:
                    self.env.close()
                if self.cache is not None:
                    self.cache.close()
        return RunResult(run_dir=self.run_dir, summary=summary)


def _aggregate(score: SplitScore | None) -> float | None:
    return None if score is None else score.aggregate


def _per_eval(score: SplitScore | None) -> dict[str, float] | None:
    return None if score is None else score.per_eval


def _count(score: SplitScore | None) -> int | None:
    return None if score is None else score.n


def run_experiment(
    config: ExperimentConfig,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[RunCallback] = (),
    integrations: Integrations | None = None,
) -> RunResult:
    """Run an experiment into ``out`` (default: a new folder under ``config.out_dir``).

    Args:
        config: the experiment.
        out: the run directory; required with ``resume``.
        resume: continue the run in ``out``.
        progress: show a progress bar.
        callbacks: side-effect hooks.
        integrations: the outside systems the config may use (Phoenix data, the
            ``[phoenix]`` callbacks), as the caller wires them; the CLI passes
            :func:`selfimprove_rl.telemetry.phoenix_integrations`.

    Returns:
        The run directory and the summary.

    Raises:
        ConfigError: ``resume`` without ``out``, or the config asks for an integration
            that ``integrations`` does not wire.
    """
    if resume and out is None:
        raise ConfigError("--resume needs --out: the run directory to continue.")
    wiring = integrations or Integrations()
    run_dir = Path(out) if out is not None else Path(config.out_dir) / run_dir_name(config)
    hooks = [*callbacks, *_integration_callbacks(config, run_dir, resume, wiring)]
    runner = ExperimentRunner(
        config, run_dir, resume=resume, progress=progress, callbacks=hooks, integrations=wiring
    )
    return runner.run()


def _integration_callbacks(
    config: ExperimentConfig, run_dir: Path, resume: bool, integrations: Integrations
) -> list[RunCallback]:
    """The callbacks the ``[phoenix]`` section asks for (a resumed run keeps its own config)."""
    saved = run_dir / "config.json"
    if resume and saved.exists():
        config = parse_config(json.loads(saved.read_text()), source=str(saved))
    section = config.phoenix
    wanted = [
        name
        for name in ("publish_prompt", "promote_production", "log_results", "trace_optimizer")
        if getattr(section, name)
    ]
    if not wanted:
        return []
    if integrations.callbacks is None:
        raise ConfigError(
            f"Expects Phoenix callbacks for phoenix.{', phoenix.'.join(wanted)}, got "
            f"integrations {integrations.name!r} without them. Run it with `selfimprove-rl "
            "run`, or pass integrations=selfimprove_rl.telemetry.phoenix_integrations() to "
            "run_experiment."
        )
    return integrations.callbacks(config)


def _episode_steps(env_options: dict[str, Any]) -> int | None:
    """The ``max_episode_steps`` for ``gymnasium.make``: the env's ``max_steps`` when set.

    The spec's limit is the env's default; passing the configured one keeps the TimeLimit
    wrapper at the step where the env itself truncates (``None``: the spec's, the default).
    """
    steps = env_options.get("max_steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None
