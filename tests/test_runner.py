from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfimprove_rl.cli import main
from selfimprove_rl.config import load_config, parse_config
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.fileio import read_jsonl
from selfimprove_rl.mimic import dataset_path
from selfimprove_rl.registry import Registry
from selfimprove_rl.runner import RUN_FILES, run_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 coffee/sports lines: a mimic file like a user's own."""
    lines = dataset_path("coffee_sports").read_text(encoding="utf-8").splitlines()[:40]
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_config(
    path: Path, data: Path, *, policy: str, steps: int, latency_ms: float = 0
) -> Path:
    faults = f"\n[backend.faults]\nlatency_ms = {latency_ms}\n" if latency_ms else ""
    path.write_text(
        f"""
name = "tiny"
seed = 1
[data]
kind = "mimic"
path = "{data}"
[backend]
kind = "simulated"
{faults}
[target]
model = "sim-keyword"
[policy]
name = "{policy}"
[env]
minibatch_size = 8
max_steps = 4
[stopping]
max_total_steps = {steps}
stagnation_steps = 100
""",
        encoding="utf-8",
    )
    return path


def test_config_errors_teach(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nnmae = "random"\n')
    with pytest.raises(ConfigError, match=r"policy\.nmae: Extra inputs are not permitted"):
        load_config(bad)
    with pytest.raises(ConfigError, match="needs endpoint, project"):
        parse_config({"data": {"kind": "phoenix"}})


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments" / "configs").glob("*.toml")), ids=lambda p: p.name
)
def test_shipped_experiment_configs_are_valid(path: Path) -> None:
    from selfimprove_rl.compare import load_compare_config

    config = load_compare_config(path)[0] if "[compare]" in path.read_text() else load_config(path)
    assert config.policy.name


def test_demo_config_matches_the_shipped_experiment() -> None:
    from selfimprove_rl.demo import demo_config

    shipped = load_config(REPO / "experiments" / "configs" / "coffee_sports.toml")
    demo = demo_config()
    for section in ("data", "target", "policy", "env", "stopping"):
        assert getattr(demo, section) == getattr(shipped, section), section


def test_run_from_cli_flags_writes_every_file(tmp_path: Path, small_jsonl: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "run", "--data", str(small_jsonl), "--policy", "rule_induction",
            "--model", "sim-keyword", "--seed", "3", "--max-steps", "4",
            "--out", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    for name in RUN_FILES:
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("train", "test", "holdout", "calls", "tokens", "backend", "policy", "seed"):
        assert key in summary
    assert summary["policy"] == "rule_induction" and summary["seed"] == 3
    assert summary["backend"] == "simulated (in-process)"
    steps = list(read_jsonl(out / "steps.jsonl"))
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert all({"directive", "reward", "scores", "calls"} <= set(s) for s in steps)
    registry = Registry(out / "versions.jsonl")
    assert registry.live_id == summary["promoted_version"]
    assert "holdout" in registry.record(registry.live_id).scores
    header = (out / "curves.csv").read_text().splitlines()[0]
    assert "reward" in header and "test_score" in header and "train_score" in header
    assert (out / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "run directory:" in capsys.readouterr().out


def test_gate_only_promotes_test_improvements(tmp_path: Path, small_jsonl: Path) -> None:
    config = load_config(_write_config(tmp_path / "c.toml", small_jsonl, policy="random", steps=6))
    result = run_experiment(config, out=tmp_path / "run", progress=False)
    registry = Registry(result.run_dir / "versions.jsonl")
    for decision in registry.decisions:
        candidate = registry.record(decision.candidate_id).scores["test"].aggregate
        baseline = registry.record(decision.baseline_id).scores["test"].aggregate
        assert decision.promoted == (candidate - baseline >= config.gate.min_improvement)
    assert result.summary["test"] >= result.summary["baseline"]["test"]


def test_existing_run_dir_needs_resume(tmp_path: Path, small_jsonl: Path) -> None:
    config = load_config(_write_config(tmp_path / "c.toml", small_jsonl, policy="random", steps=1))
    run_experiment(config, out=tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="pass --resume"):
        run_experiment(config, out=tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"holds no config\.json"):
        run_experiment(config, out=tmp_path / "other", resume=True, progress=False)


def test_resume_after_kill_loses_no_step_or_version(tmp_path: Path, small_jsonl: Path) -> None:
    config = _write_config(
        tmp_path / "c.toml", small_jsonl, policy="random", steps=10, latency_ms=150
    )
    out = tmp_path / "run"
    command = [sys.executable, "-m", "selfimprove_rl.cli", "run", str(config), "--out", str(out)]
    process = subprocess.Popen(
        [*command, "--no-progress"], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    steps_file = out / "steps.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if steps_file.exists() and len(steps_file.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    before = list(read_jsonl(steps_file))
    versions_before = [r.build.version_id for r in Registry(out / "versions.jsonl")]
    assert 3 <= len(before) < 10, "the run should have been killed mid-way"
    assert not (out / "summary.json").exists()

    done = subprocess.run(
        [*command, "--resume", "--no-progress"], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    after = list(read_jsonl(steps_file))
    assert [s["step"] for s in after] == list(range(1, 11))
    assert after[: len(before)] == before
    versions_after = [r.build.version_id for r in Registry(out / "versions.jsonl")]
    assert versions_after[: len(versions_before)] == versions_before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 10
    state = json.loads((out / "policy_state.json").read_text())
    assert state["step"] == 10


def test_api_key_never_reaches_the_run_directory(
    tmp_path: Path, small_jsonl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfimprove_rl.simulated.server import running_server

    secret = "sk-test-" + "9" * 40
    monkeypatch.setenv("SELFIMPROVE_TEST_KEY", secret)
    with running_server() as base_url:
        config = parse_config(
            {
                "name": "secret",
                "data": {"kind": "mimic", "path": str(small_jsonl)},
                "backend": {
                    "kind": "openai",
                    "base_url": base_url,
                    "api_key_env": "SELFIMPROVE_TEST_KEY",
                },
                "target": {"model": "sim-keyword"},
                "policy": {"name": "rule_induction"},
                "env": {"minibatch_size": 8},
                "stopping": {"max_total_steps": 3},
            }
        )
        result = run_experiment(config, out=tmp_path / "run", progress=False)
    assert result.summary["backend"].startswith("openai-compatible")
    assert result.summary["calls"] > 0
    for path in result.run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path.name
