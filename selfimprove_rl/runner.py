"""How does an experiment run? Checkpoint → env → policy → gate → report, in a run directory.

The workflow: load (or fetch) the checkpoint, build the env by registered id and the policy
by name, then step: the policy acts, the env replays and rewards, and every version that
beat its base on the minibatch is scored on the test split and put to the promotion gate.
The run stops on the step budget, on stagnation (no promotion for a while), on a test
threshold, or when the call budget is spent; the live build is then scored on holdout for the
report. Everything lands in the run directory:

``config.json`` (resolved config), ``checkpoint.json``, ``steps.jsonl`` (one line per env
step), ``versions.jsonl`` (the registry's event log), ``policy_state.json``, ``curves.csv``,
``reward_curve.png``, ``final_prompt.txt``, ``prompt.diff``, ``summary.json``.

The env is any registered env with versions: ``registry``, ``usage``, ``budget_exhausted()``,
``score_version(version_id, split)`` and ``evaluators``, as :class:`~envs.prompt_env.PromptEnv`
and :class:`~envs.program_env.ProgramEnv` have; an env may also show a version its own way
(``observation_for(version_id, scores)``, used when resuming) and diff two versions
(``version_diff(before_id, after_id)``, for ``prompt.diff``).

``resume=True`` continues a run killed half-way: the registry and the step log are reloaded,
the policy's memory is restored (and brought up to date with the last logged step if the kill
came between the two writes), a candidate left ungated is gated, and the next step draws the
same minibatch it would have drawn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from selfimprove_rl.checkpoint import Checkpoint
from selfimprove_rl.config import ExperimentConfig, parse_config
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.fileio import append_jsonl, atomic_write_text, read_jsonl
from selfimprove_rl.prompt import diff
from selfimprove_rl.registry import GateDecision, Registry, SplitScore

RUN_FILES = (
    "config.json",
    "checkpoint.json",
    "steps.jsonl",
    "versions.jsonl",
    "policy_state.json",
    "curves.csv",
    "reward_curve.png",
    "final_prompt.txt",
    "prompt.diff",
    "summary.json",
)


class RunCallback(Protocol):
    """Hooks for side effects of a run (publishing to Phoenix, tracing the optimizer).

    Optional hooks, called when a callback defines them: ``on_start(run)`` (env and policy
    built), ``on_episode_start(run, episode)`` (before the env resets), ``on_step_start(run,
    step)`` (before the policy acts), ``on_step_end(run, line)`` (the step's log line written),
    ``on_loop_end(run, reason)`` (before the final report), and ``on_close(run, error)``
    (always, last; ``error`` is the exception ending the run); ``should_stop(run) -> str``
    ends the run early when it returns a non-empty reason.
    """

    def on_promotion(self, run: ExperimentRunner, version_id: str, decision: GateDecision) -> None:
        """Called after the gate promotes a build."""
        ...

    def on_finish(self, run: ExperimentRunner, summary: dict[str, Any]) -> None:
        """Called once the summary is written."""
        ...


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


def load_checkpoint_for(config: ExperimentConfig, *, progress: bool = True) -> Checkpoint:
    """Load or fetch the checkpoint a config's data section names (``progress``: fetch bars)."""
    data = config.data
    if data.kind == "checkpoint":
        return Checkpoint.load(data.path)
    if data.kind == "phoenix":
        from selfimprove_rl.telemetry import PhoenixSource, build_checkpoint

        assert data.endpoint and data.project and data.since
        source = PhoenixSource(data.endpoint, data.project, progress=progress)
        frames = source.fetch(since=data.since, until=data.until)
        return build_checkpoint(frames)
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
        callbacks: side-effect hooks (see :class:`RunCallback`).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        progress: bool = True,
        callbacks: Sequence[RunCallback] = (),
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.resume = resume
        self.progress = progress
        self.callbacks = list(callbacks)
        self.steps: list[dict[str, Any]] = []
        self.checkpoint: Checkpoint | None = None
        self.env: Any = None
        self.policy: Any = None
        self.backend = config.backend
        self.stop_reason = ""

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        config_path = self.run_dir / "config.json"
        if self.resume:
            if not config_path.exists():
                raise ConfigError(
                    f"Cannot resume: {self.run_dir} holds no config.json. Start a new run instead."
                )
            # The run continues under the config it started with, whatever was passed.
            self.config = parse_config(json.loads(config_path.read_text()), source=str(config_path))
            self.checkpoint = Checkpoint.load(self.run_dir / "checkpoint.json")
            self.steps = list(read_jsonl(self.run_dir / "steps.jsonl"))
        else:
            if self.run_dir.exists() and any(self.run_dir.iterdir()):
                raise ConfigError(
                    f"{self.run_dir} is not empty; pass --resume to continue it, or choose "
                    "another --out."
                )
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(config_path, self.config.model_dump_json(indent=2))
            self.checkpoint = load_checkpoint_for(self.config, progress=self.progress)
            self.checkpoint.save(self.run_dir / "checkpoint.json")

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
        env = gymnasium.make(
            self.config.env_id,
            data=self.checkpoint,
            model=model,
            backend=self.backend,
            evaluators=evaluators,
            config=env_options,
            registry=Registry(self.run_dir / "versions.jsonl"),
        )
        return env

    def _build_policy(self) -> Any:
        from policies.registry import make_policy

        return make_policy(
            self.config.policy.name, seed=self.config.seed, **self.config.policy.kwargs
        )

    # ------------------------------------------------------------------ the loop
    @property
    def registry(self) -> Registry:
        """The run's version registry."""
        registry: Registry = self.env.unwrapped.registry
        return registry

    def _ensure_test_score(self, version_id: str) -> SplitScore:
        record = self.registry.record(version_id)
        if "test" in record.scores:
            return record.scores["test"]
        score, _ = self.env.unwrapped.score_version(version_id, "test")
        return score

    def _gate(self, version_id: str) -> GateDecision | None:
        """Score a candidate on test and put it to the gate (once per version)."""
        if version_id == self.registry.live_id:
            return None
        if any(d.candidate_id == version_id for d in self.registry.decisions):
            return None
        self._ensure_test_score(self.registry.live_id)
        self._ensure_test_score(version_id)
        decision = self.registry.gate(version_id, self.config.gate)
        if decision.promoted:
            for callback in self.callbacks:
                callback.on_promotion(self, version_id, decision)
        return decision

    def _should_gate(self, info: dict[str, Any], reward: float) -> bool:
        return (
            info["invalid_edit"] is None
            and info["version_id"] != info["base_version_id"]
            and reward > 0
        )

    def _save_policy_state(self, step: int) -> None:
        state = {"step": step, "state": self.policy.state_dict()}
        atomic_write_text(self.run_dir / "policy_state.json", json.dumps(state, default=str))

    def _restore_policy(self) -> None:
        path = self.run_dir / "policy_state.json"
        saved_step = 0
        if path.exists():
            saved = json.loads(path.read_text())
            self.policy.load_state_dict(saved["state"])
            saved_step = int(saved["step"])
        if self.steps and saved_step < self.steps[-1]["step"]:
            # Killed between the step line and the policy state: replay the missing update.
            from envs.spaces import EnvAction
            from policies.base import Transition

            line = self.steps[-1]
            action = EnvAction(edits=line["directive"], base_version=line["base_version"])
            previous = self._observation_for(line["base_version"], line["info"]["base_scores"])
            following = self._observation_for(line["current_version"], line["info"]["scores"])
            self.policy.update(
                Transition(
                    previous,
                    action,
                    line["reward"],
                    following,
                    line["terminated"],
                    line["truncated"],
                    line["info"],
                )
            )
            self._save_policy_state(line["step"])

    def _observation_for(self, version_id: str, scores: dict[str, float]) -> dict[str, Any]:
        own = getattr(self.env.unwrapped, "observation_for", None)
        if own is not None:  # an env that shows its versions its own way (programs)
            return dict(own(version_id, scores))
        from envs.observation import build_observation

        state = self.registry.build(version_id).state
        names = [e.name for e in self.env.unwrapped.evaluators]
        values = [scores.get("aggregate", 0.0), *(scores.get(n, 0.0) for n in names)]
        return build_observation(state, version_id, values)

    def _stop_reason(self, since_promotion: int) -> str:
        stopping = self.config.stopping
        if len(self.steps) >= stopping.max_total_steps:
            return f"reached max_total_steps={stopping.max_total_steps}"
        if stopping.stagnation_steps is not None and since_promotion >= stopping.stagnation_steps:
            return f"no promotion in {since_promotion} steps (stagnation_steps)"
        live = self.registry.record(self.registry.live_id)
        threshold = stopping.test_threshold
        if (
            threshold is not None
            and "test" in live.scores
            and live.scores["test"].aggregate >= threshold
        ):
            return f"live build test score {live.scores['test'].aggregate:.4f} >= {threshold}"
        if self.env.unwrapped.budget_exhausted():
            return "call/token budget spent"
        for callback in self.callbacks:
            asked = getattr(callback, "should_stop", None)
            reason = asked(self) if asked is not None else ""
            if reason:
                return str(reason)
        return ""

    def _episode_seed(self, episode: int) -> int:
        return self.config.seed * 1000 + episode

    def _loop(self) -> None:
        from policies.base import Transition

        env = self.env
        unwrapped = env.unwrapped
        episode = self.steps[-1]["episode"] if self.steps else 0
        episode_step = self.steps[-1]["episode_step"] if self.steps else 0
        start_fresh = not self.steps or self.steps[-1]["terminated"] or self.steps[-1]["truncated"]
        if self.steps and start_fresh:
            episode, episode_step = episode + 1, 0
        options: dict[str, Any] = {}
        if not start_fresh:
            options = {"version": self.steps[-1]["current_version"], "step": episode_step}
        self._notify("on_episode_start", episode)
        observation, info = env.reset(seed=self._episode_seed(episode), options=options)
        self.policy.reset(observation, info)
        since_promotion = self._steps_since_promotion()
        bar = self._progress_bar()
        while not (reason := self._stop_reason(since_promotion)):
            self._notify("on_step_start", len(self.steps) + 1)
            usage_before = unwrapped.usage
            action = self.policy.act(observation, info)
            next_observation, reward, terminated, truncated, info = env.step(action)
            usage_after = unwrapped.usage
            decision = self._gate(info["version_id"]) if self._should_gate(info, reward) else None
            since_promotion = (
                0 if decision is not None and decision.promoted else since_promotion + 1
            )
            episode_step += 1
            line = self._step_line(
                episode,
                episode_step,
                reward,
                terminated,
                truncated,
                info,
                decision,
                usage_before,
                usage_after,
            )
            append_jsonl(self.run_dir / "steps.jsonl", line)
            self.steps.append(line)
            self.policy.update(
                Transition(
                    observation, action, reward, next_observation, terminated, truncated, info
                )
            )
            self._save_policy_state(line["step"])
            self._notify("on_step_end", line)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{reward:+.3f}", live=self.registry.live_id)
            observation = next_observation
            if terminated or truncated:
                episode, episode_step = episode + 1, 0
                self._notify("on_episode_start", episode)
                observation, info = env.reset(seed=self._episode_seed(episode))
                self.policy.reset(observation, info)
        if bar is not None:
            bar.close()
        self.stop_reason = reason
        self._notify("on_loop_end", reason)

    def _notify(self, hook: str, *args: Any) -> None:
        """Call an optional hook (see :class:`RunCallback`) on the callbacks that define it."""
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)

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
        episode: int,
        episode_step: int,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict[str, Any],
        decision: GateDecision | None,
        usage_before: dict[str, int],
        usage_after: dict[str, int],
    ) -> dict[str, Any]:
        live_id = self.registry.live_id
        live_test = self.registry.record(live_id).scores.get("test")
        return {
            "step": len(self.steps) + 1,
            "episode": episode,
            "episode_step": episode_step,
            "directive": info["directive"],
            "base_version": info["base_version_id"],
            "version_id": info["version_id"],
            "current_version": info["current_version_id"],
            "reward": reward,
            "accepted": info["accepted"],
            "invalid_edit": info["invalid_edit"],
            "scores": info["scores"],
            "base_scores": info["base_scores"],
            "calls": usage_after["calls"] - usage_before["calls"],
            "tokens": usage_after["tokens"] - usage_before["tokens"],
            "cumulative_calls": usage_after["calls"],
            "cumulative_tokens": usage_after["tokens"],
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
        scores: dict[str, dict[str, Any]] = {}
        for version_id in dict.fromkeys([live_id, baseline_id]):
            record = registry.record(version_id)
            per_split: dict[str, Any] = {}
            for split in ("train", "test", "holdout"):
                score = record.scores.get(split)
                if score is None:
                    score, _ = unwrapped.score_version(version_id, split)
                per_split[split] = score
            scores[version_id] = per_split
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
        write_curves(self.steps, self.run_dir / "curves.csv")
        write_reward_plot(self.steps, self.run_dir / "reward_curve.png", title=self.config.name)
        usage = unwrapped.usage
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
            **{split: scores[live_id][split].aggregate for split in ("train", "test", "holdout")},
            "per_eval": {
                split: scores[live_id][split].per_eval for split in ("train", "test", "holdout")
            },
            "baseline": {
                split: scores[baseline_id][split].aggregate
                for split in ("train", "test", "holdout")
            },
            "calls": usage["calls"],
            "replay_calls": usage["replay_calls"],
            "judge_calls": usage["judge_calls"],
            "tokens": usage["tokens"],
            "cache_hits": usage["cache_hits"],
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
        """
        self._prepare()
        # A local model server (backend kind "local_llm") runs for the duration of the run.
        with self.config.backend.serving() as backend:
            self.backend = backend
            return self._run_prepared()

    def _run_prepared(self) -> RunResult:
        self.env = self._build_env()
        error: BaseException | None = None
        try:
            self.policy = self._build_policy()
            self._notify("on_start")
            if self.resume:
                self._restore_policy()
                for line in self.steps[-1:]:
                    if line["gate"] is None and self._should_gate(line["info"], line["reward"]):
                        self._gate(line["version_id"])
            self._loop()
            summary = self._finish()
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                self._notify("on_close", error)
            finally:
                self.env.close()
        return RunResult(run_dir=self.run_dir, summary=summary)


def run_experiment(
    config: ExperimentConfig,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[RunCallback] = (),
) -> RunResult:
    """Run an experiment into ``out`` (default: a new folder under ``config.out_dir``).

    Args:
        config: the experiment.
        out: the run directory; required with ``resume``.
        resume: continue the run in ``out``.
        progress: show a progress bar.
        callbacks: side-effect hooks.

    Returns:
        The run directory and the summary.
    """
    if resume and out is None:
        raise ConfigError("--resume needs --out: the run directory to continue.")
    run_dir = Path(out) if out is not None else Path(config.out_dir) / run_dir_name(config)
    hooks = [*callbacks, *_phoenix_callbacks(config, run_dir, resume)]
    runner = ExperimentRunner(config, run_dir, resume=resume, progress=progress, callbacks=hooks)
    return runner.run()


def _phoenix_callbacks(config: ExperimentConfig, run_dir: Path, resume: bool) -> list[RunCallback]:
    """The callbacks the ``[phoenix]`` section asks for (a resumed run keeps its own config)."""
    saved = run_dir / "config.json"
    if resume and saved.exists():
        config = parse_config(json.loads(saved.read_text()), source=str(saved))
    section = config.phoenix
    wanted = (
        section.publish_prompt,
        section.promote_production,
        section.log_results,
        section.trace_optimizer,
    )
    if not any(wanted):
        return []
    from selfimprove_rl.telemetry.callbacks import build_callbacks

    return build_callbacks(config)
