"""What does an experiment run? Its TOML config, validated by pydantic.

Example config (``experiments/configs/coffee_sports.toml``)::

    name = "coffee_sports"
    seed = 0

    [data]
    kind = "dataset"          # dataset | mimic | checkpoint | phoenix
    path = "coffee_sports"

    [target]
    model = "sim-large"

    [policy]
    name = "rule_induction"

    [env]
    minibatch_size = 32
    max_steps = 12

    [stopping]
    max_total_steps = 30
    test_threshold = 0.97

Every field carries a one-line description; unknown keys are errors, so a typo never passes
silently.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from selfimprove_rl.backend import Backend
from selfimprove_rl.config_files import apply_settings, locate_config, settings_error
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.registry import GateConfig
from selfimprove_rl.replay import ReplayConfig

_STRICT = ConfigDict(extra="forbid", frozen=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


Name = Annotated[str, AfterValidator(_not_blank)]
"""A name or path: any text but the empty string or whitespace (``--model ""`` is an error)."""


class DataConfig(BaseModel):
    """Where the logged samples come from."""

    model_config = _STRICT

    kind: Literal["dataset", "mimic", "checkpoint", "phoenix", "pipeline"] = Field(
        default="dataset",
        description="A shipped data set name, a mimic JSONL, a checkpoint JSON, Phoenix, or a "
        "pipeline (a shipped pipeline name or a pipeline definition JSON).",
    )
    path: Name = Field(
        default="coffee_sports", description="Data set name or file path (not for Phoenix)."
    )
    endpoint: str | None = Field(default=None, description="Phoenix base URL (kind=phoenix).")
    project: str | None = Field(default=None, description="Phoenix project (kind=phoenix).")
    since: datetime | None = Field(default=None, description="Start of the telemetry window.")
    until: datetime | None = Field(default=None, description="End of the window (default: now).")

    @model_validator(mode="after")
    def _phoenix_fields(self) -> DataConfig:
        if self.kind == "phoenix":
            missing = [k for k in ("endpoint", "project", "since") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"data.kind = 'phoenix' needs {', '.join(missing)}")
            if self.since is not None and self.since.tzinfo is None:
                raise ValueError("data.since needs a timezone, e.g. 2026-11-01T00:00:00Z")
        return self


class TargetConfig(BaseModel):
    """The call being optimized."""

    model_config = _STRICT

    model: Name | None = Field(
        default=None,
        description="Target model (default: sim-large for mimic data, else as logged).",
    )
    allowed_models: list[Name] | None = Field(
        default=None, description="Models a MODEL edit may switch to (default: only the target)."
    )


class EvalConfig(BaseModel):
    """How outputs are judged."""

    model_config = _STRICT

    judge_model: str | None = Field(
        default=None, description="Override the judge model of classifier evals."
    )
    weights: dict[str, float] = Field(
        default_factory=dict, description="Eval name -> weight in the aggregate score."
    )


class PolicyConfig(BaseModel):  # type: ignore[no-redef]  # pydantic-mypy: a field named kwargs
    """Which policy acts, by registered name or 'module:Class'."""

    model_config = _STRICT

    name: Name = Field(default="rule_induction", description="Policy name or 'module:Class'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Policy constructor kwargs.")


class StoppingConfig(BaseModel):
    """When a run ends."""

    model_config = _STRICT

    max_total_steps: int = Field(default=30, ge=1, description="Env steps across all episodes.")
    stagnation_steps: int | None = Field(
        default=12, ge=1, description="Stop after this many steps without a promotion."
    )
    test_threshold: float | None = Field(
        default=None, description="Stop once the live build's test score reaches this."
    )
    when_gate_cannot_promote: bool = Field(
        default=True,
        description="After a promotion, score the live build on the whole test split (calls "
        "the final report reuses) and stop once the next gate could not promote even a "
        "candidate scoring 1 on every test sample: nothing left is certifiable on this split.",
    )


class PhoenixRunConfig(BaseModel):
    """What a run writes back to Phoenix (used with a Phoenix data source)."""

    model_config = _STRICT

    endpoint: str | None = Field(
        default=None,
        description="Phoenix base URL for publishing, results and traces (default: data.endpoint).",
    )
    publish_prompt: bool = Field(
        default=False, description="Publish each promoted build as a Phoenix prompt version."
    )
    prompt_name: str | None = Field(default=None, description="Phoenix prompt to publish under.")
    promote_production: bool = Field(
        default=False, description="Move the 'production' tag to the final build (publishes it)."
    )
    log_results: bool = Field(default=False, description="Log the run's scores back to Phoenix.")
    trace_optimizer: bool = Field(
        default=False, description="Trace episodes and steps into a separate Phoenix project."
    )
    optimizer_project: str = Field(
        default="selfimprove-rl-optimizer", description="Project for the optimizer's own traces."
    )


class ExperimentConfig(BaseModel):
    """One experiment: data, target, evals, env, policy, gate, stopping, output."""

    model_config = _STRICT

    name: Name = Field(default="experiment", description="Experiment name (run folder prefix).")
    seed: int = Field(default=0, description="Seed of the env episodes and the policy.")
    out_dir: str = Field(default="runs", description="Folder that receives run directories.")
    env_id: Name = Field(
        default="selfimprove_rl/PromptEnv-v0", description="Registered Gymnasium env id."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    backend: Backend = Field(default_factory=Backend)
    target: TargetConfig = Field(default_factory=TargetConfig)
    evals: EvalConfig = Field(default_factory=EvalConfig)
    env: dict[str, Any] = Field(
        default_factory=dict, description="PromptEnv options (see envs.prompt_env.PromptEnvConfig)."
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    stopping: StoppingConfig = Field(default_factory=StoppingConfig)
    replay: ReplayConfig = Field(
        default_factory=ReplayConfig,
        description="How replays reach the backend (concurrency, retries, timeouts, backoff) and "
        "when its failures end the run (max_consecutive_failures, failure_window, "
        "max_failure_rate); passed to the env's replayer.",
    )
    phoenix: PhoenixRunConfig = Field(default_factory=PhoenixRunConfig)

    @model_validator(mode="after")
    def _local_model_defaults(self) -> ExperimentConfig:
        # The local server answers to its alias (a logged model name would mislabel results)
        # and one request at a time (see Backend.replay_defaults).
        if self.backend.kind == "local_llm" and self.target.model is None:
            target = self.target.model_copy(update={"model": self.backend.local_options.alias})
            object.__setattr__(self, "target", target)
        given = self.replay.model_fields_set
        missing = {k: v for k, v in self.backend.replay_defaults().items() if k not in given}
        if missing:
            object.__setattr__(self, "replay", self.replay.model_copy(update=missing))
        return self

    def with_overrides(self, **updates: Any) -> ExperimentConfig:
        """Return a validated copy with top-level or dotted (``policy.name``) fields replaced."""
        data = self.model_dump(mode="json")
        for key, value in updates.items():
            if value is None:
                continue
            target = data
            *parents, leaf = key.split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        return parse_config(data, source="overrides")


def validation_problems(exc: ValidationError, *, prefix: str = "") -> str:
    """Return one indented ``a.b: message`` line per invalid field of a pydantic error."""
    return "\n".join(
        f"  {prefix}{'.'.join(str(p) for p in error['loc']) or '<root>'}: {error['msg']}"
        for error in exc.errors()
    )


def parse_config(
    data: dict[str, Any], *, source: str = "config", settings: Sequence[str] = ()
) -> ExperimentConfig:
    """Validate a config mapping, after applying ``--set a.b=value`` settings to it.

    Raises:
        ConfigError: listing every invalid field as ``a.b: message`` (on one line, with the
            closest known key for an unknown one, when ``settings`` were given).
    """
    if settings:
        data = apply_settings(data, settings)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        if settings:
            raise settings_error(exc, ExperimentConfig, settings) from exc
        problems = validation_problems(exc)
        raise ConfigError(f"Invalid experiment config ({source}):\n{problems}") from exc


def read_toml(path: str | Path) -> dict[str, Any]:
    """Return a config file's TOML tables as a dict (not validated).

    Args:
        path: a TOML file, or the name of a shipped config (``coffee_sports``; see
            :func:`~selfimprove_rl.config_files.locate_config`).

    Raises:
        ConfigError: no such file or shipped config, or not TOML.
    """
    target = locate_config(path)
    if isinstance(target, Path) and target.is_dir():
        raise ConfigError(f"{target} is a directory; expected a TOML config file.")
    try:
        text = target.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{target} is not UTF-8 text ({exc.reason} at byte {exc.start}); TOML configs "
            "are UTF-8."
        ) from exc
    except OSError as exc:
        raise ConfigError(f"Cannot read config {target}: {exc.strerror or exc}.") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{target} is not valid TOML: {exc}") from exc


def load_config(path: str | Path | None, *, settings: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate a TOML experiment config (or the defaults), with ``--set`` settings.

    Args:
        path: a TOML file or a shipped config name; ``None``: the defaults.
        settings: ``a.b=value`` changes applied before validation.

    Raises:
        ConfigError: the file is missing, not TOML, or invalid.
    """
    data = read_toml(path) if path is not None else {}
    return parse_config(data, source=str(path or "defaults"), settings=settings)
