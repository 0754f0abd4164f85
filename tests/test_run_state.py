"""Exact resume: a run killed (SIGKILL, a real subprocess) at named points ends like one that
was never interrupted: same steps, versions, final prompt, calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from selfimprove_rl.errors import ConfigError
from selfimprove_rl.fileio import read_jsonl
from selfimprove_rl.mimic import load_dataset
from selfimprove_rl.run_state import RUN_STATE_FILE, load_run_state, reconcile

REPO = Path(__file__).resolve().parents[1]

# A scripted policy that promotes early and then draws edits with its seeded RNG, so a resume
# that lost the RNG state (or the episode's minibatch) would take other steps.
POLICY = """
from policies.base import BasePolicy

COFFEE = "I see you are a person of taste! I like coffee, too."
SPORTS = "Well, I don't like sports."
MOVES = [
    'ADD: if input mentions coffee or espresso or latte: respond "' + COFFEE + '"',
    'ADD: else: respond "' + SPORTS + '"',
    "DEL: 1",
    "no_change",
    'ADD: if input mentions tea: respond "Tea!"',
]


class Scripted(BasePolicy):
    name = "scripted"

    def __init__(self, seed=None):
        super().__init__(seed)
        self.acted = 0

    def act(self, observation, info):
        self.acted += 1
        if self.acted == 1:
            return MOVES[0]
        return MOVES[int(self.rng.integers(len(MOVES)))]

    def state_dict(self):
        return {**super().state_dict(), "acted": self.acted}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.acted = int(state["acted"])
"""

# Runs the experiment; SIGKILLs itself at the n-th time it reaches the named stage.
SCRIPT = """
import os, signal, sys
from selfimprove_rl.config import load_config
from selfimprove_rl.runner import run_experiment

config, out, stage = sys.argv[1], sys.argv[2], sys.argv[3]
nth, resume = int(sys.argv[4]), sys.argv[5] == "1"

class KillAt:
    seen = 0

    def hit(self, name):
        if name == stage:
            KillAt.seen += 1
            if KillAt.seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    def on_stage(self, run, name):
        self.hit(name)

    def on_promotion(self, run, version_id, decision):
        self.hit("promotion")

    def on_finish(self, run, summary):
        pass

result = run_experiment(
    load_config(config), out=out, resume=resume, progress=False, callbacks=[KillAt()]
)
print(result.summary["calls"])
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("resume")
    (folder / "scripted_policy.py").write_text(POLICY, encoding="utf-8")
    (folder / "kill_at.py").write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    checkpoint = folder / "checkpoint.json"
    load_dataset("coffee_sports", model="sim-keyword", eval_kind="exact_match", limit=60).save(
        checkpoint
    )
    config = folder / "config.toml"
    config.write_text(
        f"""
name = "resume"
seed = 2
[data]
kind = "checkpoint"
path = "{checkpoint}"
[target]
model = "sim-keyword"
[policy]
name = "scripted_policy:Scripted"
[env]
minibatch_size = 8
max_steps = 3
max_calls = 400
[gate]
mode = "full_split"  # 12 test samples: too few for the sequential gate to promote
[stopping]
max_total_steps = 9
stagnation_steps = 100
""",
        encoding="utf-8",
    )
    return folder, config


def _run(folder: Path, config: Path, out: Path, stage: str = "", nth: int = 0) -> int:
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{REPO}"}
    done = subprocess.run(
        [sys.executable, str(folder / "kill_at.py"), str(config), str(out), stage or "-",
         str(nth), "1" if (out / "config.json").exists() else "0"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode not in (0, -9):
        raise AssertionError(done.stderr[-3000:])
    return done.returncode


def _outcome(out: Path) -> dict[str, Any]:
    events = list(read_jsonl(out / "versions.jsonl"))
    for event in events:
        event.pop("at", None)
        event.get("build", {}).pop("created_at", None)
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("run_dir")
    return {
        "steps": list(read_jsonl(out / "steps.jsonl")),
        "events": events,
        "summary": summary,
        "prompt": (out / "final_prompt.txt").read_text(),
        "curves": (out / "curves.csv").read_text(),
    }


def test_killed_at_every_stage_and_resumed_ends_like_an_uninterrupted_run(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, config = setup
    reference = tmp_path / "reference"
    assert _run(folder, config, reference) == 0
    expected = _outcome(reference)
    assert expected["summary"]["promotions"] >= 1 and expected["summary"]["steps"] == 9

    out = tmp_path / "killed"
    # Each kill lands in the process resumed after the previous one: mid-step before the gate,
    # after a promotion was decided but before its step line, between the run state and the
    # step line, at a new episode's reset, during the final report.
    kills = [("stepped", 2), ("promotion", 1), ("saved", 2), ("reset", 1), ("reported", 1)]
    for stage, nth in kills:
        assert _run(folder, config, out, stage, nth) == -9, f"not killed at {stage}"
        assert not (out / "summary.json").exists()
    assert _run(folder, config, out) == 0
    assert _outcome(out) == expected


def test_resume_of_a_finished_run_keeps_its_summary(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, config = setup
    out = tmp_path / "done"
    assert _run(folder, config, out) == 0
    before = (out / "summary.json").read_bytes()
    versions = (out / "versions.jsonl").read_bytes()
    mtime = (out / "summary.json").stat().st_mtime_ns
    assert _run(folder, config, out) == 0
    assert (out / "summary.json").read_bytes() == before
    assert (out / "summary.json").stat().st_mtime_ns == mtime
    assert (out / "versions.jsonl").read_bytes() == versions


def test_reconcile_appends_a_committed_line_and_refuses_a_hand_edited_log(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, config = setup
    out = tmp_path / "between"
    assert _run(folder, config, out, "saved", 3) == -9  # state of step 2 saved, line not yet
    state = load_run_state(out)
    assert state is not None and state.step == 2
    assert len(list(read_jsonl(out / "steps.jsonl"))) == 1
    recovered, steps = reconcile(out)
    assert recovered == state and [s["step"] for s in steps] == [1, 2]
    assert steps[-1] == state.line
    (out / "steps.jsonl").write_text("")
    with pytest.raises(ConfigError, match="committed 2; the run directory was changed"):
        reconcile(out)
    (out / RUN_STATE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="is not a readable run state"):
        load_run_state(out)


def test_a_program_run_resumes_exactly_and_keeps_its_budget(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    from selfimprove_rl.program_data import load_pipeline

    folder, _ = setup
    pipeline = load_pipeline(model="sim-keyword", limit=60).save(tmp_path / "pipeline.json")
    config = tmp_path / "program.toml"
    config.write_text(
        f"""
name = "program"
env_id = "selfimprove_rl/ProgramEnv-v0"
[data]
kind = "checkpoint"
path = "{pipeline}"
[target]
model = "sim-keyword"
[policy]
name = "program_coach"
kwargs = {{ mode = "joint" }}
[env]
minibatch_size = 8
max_steps = 4
observe_on_no_op = true
max_calls = 260
[gate]
mode = "full_split"  # a tiny test split: too few samples for the sequential gate to promote
[stopping]
max_total_steps = 8
stagnation_steps = 100
""",
        encoding="utf-8",
    )
    reference = tmp_path / "reference"
    assert _run(folder, config, reference) == 0
    expected = _outcome(reference)
    assert expected["summary"]["calls"] <= 260 and expected["summary"]["promotions"] >= 1
    out = tmp_path / "killed"
    for stage, nth in (("promotion", 1), ("saved", 3)):
        assert _run(folder, config, out, stage, nth) == -9
    assert _run(folder, config, out) == 0
    assert _outcome(out) == expected
