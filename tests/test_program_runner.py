"""Programs through the workflow: runner, registry, run directory, resume, compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove_rl.config import parse_config
from selfimprove_rl.fileio import read_jsonl
from selfimprove_rl.program_data import load_pipeline
from selfimprove_rl.program_state import NodeEdit, ProgramState
from selfimprove_rl.registry import Registry
from selfimprove_rl.runner import RUN_FILES, run_experiment


@pytest.fixture
def checkpoint_path(tmp_path: Path) -> Path:
    return load_pipeline(model="sim-keyword", limit=60).save(tmp_path / "pipeline.json")


def config(path: Path, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "program",
        "env_id": "selfimprove_rl/ProgramEnv-v0",
        "data": {"kind": "checkpoint", "path": str(path)},
        "target": {"model": "sim-keyword"},
        "policy": {"name": "program_coach", "kwargs": {"mode": "joint"}},
        "env": {"minibatch_size": None, "max_steps": 4, "observe_on_no_op": True},
        "stopping": {"max_total_steps": 5, "stagnation_steps": None},
    }
    base.update(overrides)
    return base


def test_a_program_run_writes_every_file_and_versions_reload(
    tmp_path: Path, checkpoint_path: Path
) -> None:
    result = run_experiment(
        parse_config(config(checkpoint_path)), out=tmp_path / "run", progress=False
    )
    for name in RUN_FILES:
        assert (result.run_dir / name).exists(), name
    registry = Registry(result.run_dir / "versions.jsonl")
    live = registry.build(registry.live_id)
    assert isinstance(live.state, ProgramState)
    assert all(isinstance(edit, NodeEdit) for r in registry for edit in r.build.edits)
    final = (result.run_dir / "final_prompt.txt").read_text()
    assert final.startswith("### node router (sim-keyword)") and "### node responder" in final
    steps = list(read_jsonl(result.run_dir / "steps.jsonl"))
    assert steps and all("node_rewards" in s["info"] for s in steps)
    summary = result.summary
    assert set(summary["per_eval"]["test"]) == {"similarity"}
    assert summary["model"] == "sim-keyword"


def test_a_program_run_resumes(tmp_path: Path, checkpoint_path: Path) -> None:
    first = parse_config(config(checkpoint_path, stopping={"max_total_steps": 2}))
    out = tmp_path / "run"
    run_experiment(first, out=out, progress=False)
    (out / "summary.json").unlink()
    saved = json.loads((out / "config.json").read_text())
    saved["stopping"]["max_total_steps"] = 4
    (out / "config.json").write_text(json.dumps(saved))
    result = run_experiment(first, out=out, resume=True, progress=False)
    assert [s["step"] for s in read_jsonl(out / "steps.jsonl")] == [1, 2, 3, 4]
    assert result.summary["steps"] == 4


def test_a_team_of_agents_runs_through_the_runner(tmp_path: Path, checkpoint_path: Path) -> None:
    team = config(
        checkpoint_path,
        env_id="selfimprove_rl/ProgramAgents-v0",
        policy={"name": "agent_team"},
        env={"minibatch_size": None, "max_steps": 3, "agent_reward": "difference"},
        stopping={"max_total_steps": 3, "stagnation_steps": None},
    )
    result = run_experiment(parse_config(team), out=tmp_path / "team", progress=False)
    steps = list(read_jsonl(result.run_dir / "steps.jsonl"))
    assert len(steps) == 3
    assert set(steps[0]["info"]["agents"]) == {"router", "responder"}
    assert "difference_reward" in steps[0]["info"]["agents"]["router"]


def test_compare_runs_program_policies_at_one_budget(tmp_path: Path, checkpoint_path: Path) -> None:
    from selfimprove_rl.compare import parse_compare, run_compare

    experiment = parse_config(config(checkpoint_path, stopping={"max_total_steps": 3}))
    compare = parse_compare(
        {
            "seeds": 1,
            "budget_calls": 400,
            "jobs": 1,
            "policies": [
                {"name": "program_coach", "label": "alternate", "kwargs": {"mode": "alternate"}},
                {"name": "program_coach", "label": "joint", "kwargs": {"mode": "joint"}},
            ],
        }
    )
    result = run_compare(experiment, compare, out=tmp_path / "cmp", progress=False)
    assert [row["policy"] for row in result.rows] == ["alternate", "joint"]
    assert all(row["runs"] == 1 and row["failed"] == 0 for row in result.rows)
    assert (result.out_dir / "compare.md").exists()
