"""Where exactly was a run when it stopped? The commit record a killed run resumes from.

A run commits each step by writing ``run_state.json`` atomically, then appending the step's
line to ``steps.jsonl``. The state holds everything the next step depends on: the step line
itself, the policy's memory (its RNG included), the env's episode (current version, its
minibatch, the minibatch seed and step index, ``np_random``), the spend counters with the
cache ledger's position, and how many events the registry log held. Whatever a process wrote
after its last commit belongs to a step that never finished; :func:`reconcile` brings the
directory back to the commit:

* the registry log is cut back to the committed number of events (a version, scores or a
  gate decision of the unfinished step are redone, identically, by the resumed run, so a
  decision can never be in the registry without its step line);
* a step line missing after its state was saved (killed between the two writes) is appended
  from the state;
* what the killed process paid after the commit stays in the response cache and its ledger,
  so the redone step gets cache hits and the spend counters still count it once.

When the loop ends, the last state is saved again with its ``stop_reason``: a resumed run then
goes straight to the final report (redone from the cache if the kill came during it), and a
run whose ``summary.json`` was written is finished and left as it is; unless the stop was the
stopping rule's and the rule, as configured now, allows more steps: then the run continues.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from selfimprove_rl.errors import ConfigError
from selfimprove_rl.fileio import append_jsonl, atomic_write_text, read_jsonl
from selfimprove_rl.registry import truncate_log

RUN_STATE_FILE = "run_state.json"
RUN_STATE_SCHEMA_VERSION = 1


class LiveTestScores(BaseModel):
    """A build's per-sample scores on the whole test split, in split order."""

    model_config = ConfigDict(frozen=True)

    version_id: str
    per_sample: tuple[float, ...]


class RunState(BaseModel):
    """A run's commit record after a step (``step`` 0: after the first reset)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = RUN_STATE_SCHEMA_VERSION
    step: int = Field(ge=0, description="Steps committed.")
    episode: int = Field(ge=0, description="The episode of the last committed step.")
    episode_step: int = Field(ge=0, description="Steps committed in that episode.")
    registry_events: int = Field(ge=0, description="Events in versions.jsonl at the commit.")
    env: dict[str, Any] = Field(description="PromptEnv.state_dict() at the commit.")
    policy: Any = Field(description="The policy's state_dict() after its update.")
    spend: dict[str, Any] = Field(description="PromptEnv.spend.state() at the commit.")
    line: dict[str, Any] | None = Field(default=None, description="The committed step line.")
    info: dict[str, Any] | None = Field(
        default=None, description="At step 0: the reset's info, which the first action sees."
    )
    stop_reason: str = Field(
        default="", description="Why the loop ended ('' while it runs); the report comes next."
    )
    stop_by_budget: bool = Field(
        default=False, description="Whether the budget ended it (a resume keeps that stop)."
    )
    live_test: LiveTestScores | None = Field(
        default=None,
        description="The live build's per-sample scores on the whole test split, when the "
        "stopping rule needed them (a resume reads them instead of scoring again).",
    )


def save_run_state(run_dir: Path, state: RunState) -> Path:
    """Write the commit record atomically; returns its path.

    A value a policy's ``state_dict`` holds that JSON cannot (an array, a path) is written as
    its ``str``, as before this record existed; such a policy resumes only approximately.
    """
    text = json.dumps(state.model_dump(mode="python"), default=str)
    return atomic_write_text(run_dir / RUN_STATE_FILE, text)


def load_run_state(run_dir: Path) -> RunState | None:
    """Return the commit record, or ``None`` when the run never committed (killed at start).

    Raises:
        ConfigError: the file exists but is not a run state of this version.
    """
    path = run_dir / RUN_STATE_FILE
    if not path.exists():
        return None
    try:
        state = RunState.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not a readable run state ({exc.__class__.__name__}); the run cannot be "
            "resumed exactly. Start a new run with another --out."
        ) from exc
    if state.schema_version != RUN_STATE_SCHEMA_VERSION:
        raise ConfigError(
            f"{path} has run-state schema {state.schema_version}, this version reads "
            f"{RUN_STATE_SCHEMA_VERSION}; finish the run with the version that started it."
        )
    return state


def finished(run_dir: Path, state: RunState | None) -> bool:
    """Whether the run in ``run_dir`` ended and wrote its summary."""
    return state is not None and bool(state.stop_reason) and (run_dir / "summary.json").exists()


def reconcile(run_dir: Path) -> tuple[RunState | None, list[dict[str, Any]]]:
    """Bring a killed run's directory back to its last commit (see the module docstring).

    A finished run (see :func:`finished`) is left untouched.

    Returns:
        The commit record (``None`` if there is none yet) and the committed step lines.

    Raises:
        ConfigError: the step log and the state disagree beyond one missing line.
    """
    state = load_run_state(run_dir)
    steps_path = run_dir / "steps.jsonl"
    steps = list(read_jsonl(steps_path))
    committed = state.step if state is not None else 0
    if len(steps) == committed - 1 and state is not None and state.line is not None:
        append_jsonl(steps_path, state.line)
        steps.append(state.line)
    if len(steps) != committed or [s.get("step") for s in steps] != list(range(1, committed + 1)):
        raise ConfigError(
            f"{steps_path} holds {len(steps)} steps but {RUN_STATE_FILE} committed {committed}; "
            "the run directory was changed by hand and cannot be resumed exactly."
        )
    if not finished(run_dir, state):
        truncate_log(run_dir / "versions.jsonl", state.registry_events if state else 0)
    return state, steps
