from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfimprove_rl.cli import main
from selfimprove_rl.config import load_config, parse_config
from selfimprove_rl.errors import ConfigError, SelfImproveError
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
    path: Path,
    data: Path,
    *,
    policy: str,
    steps: int,
    latency_ms: float = 0,
    gate: str = "sequential",
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
[gate]
mode = "{gate}"
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
    path = _write_config(
        tmp_path / "c.toml", small_jsonl, policy="random", steps=6, gate="full_split"
    )
    config = load_config(path)
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
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"is not empty \(it holds \['notes.txt'\]\)"):
        run_experiment(config, out=tmp_path / "foreign", progress=False)


def test_a_failed_start_blocks_neither_a_new_start_nor_says_resume(
    tmp_path: Path, small_jsonl: Path
) -> None:
    out = tmp_path / "run"
    bad = load_config(_write_config(tmp_path / "c.toml", small_jsonl, policy="random", steps=1))
    bad = bad.with_overrides(**{"data.path": str(tmp_path / "missing.jsonl")})
    with pytest.raises(SelfImproveError, match=r"missing\.jsonl"):
        run_experiment(bad, out=out, progress=False)
    assert not (out / "config.json").exists()
    with pytest.raises(ConfigError, match=r"holds no config\.json .* without --resume"):
        run_experiment(bad, out=out, resume=True, progress=False)
    unknown_policy = bad.with_overrides(**{"data.path": str(small_jsonl), "policy.name": "nope"})
    with pytest.raises(SelfImproveError, match="Unknown policy 'nope'"):
        run_experiment(unknown_policy, out=out, progress=False)  # fails after the checkpoint
    assert {p.name for p in out.iterdir()} <= {"checkpoint.json", "versions.jsonl", "cache.sqlite"}
    good = unknown_policy.with_overrides(**{"policy.name": "random"})
    result = run_experiment(good, out=out, progress=False)
    assert result.summary["steps"] == 1 and (out / "config.json").exists()


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
    state = json.loads((out / "run_state.json").read_text())
    assert state["step"] == 10 and state["stop_reason"] == "reached max_total_steps=10"


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


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _backend_config(path: Path, data: Path, base_url: str, **replay: object) -> Path:
    options = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "max_retries": 1, **replay}
    table = "\n".join(f"{key} = {json.dumps(value)}" for key, value in options.items())
    path.write_text(
        f"""
name = "backend"
[data]
kind = "mimic"
path = "{data}"
[backend]
kind = "openai"
base_url = "{base_url}"
[target]
model = "sim-keyword"
[policy]
name = "random"
[env]
minibatch_size = 8
[stopping]
max_total_steps = 2
[replay]
{table}
""",
        encoding="utf-8",
    )
    return path


def test_replay_section_reaches_the_env_and_its_replayer(tmp_path: Path, small_jsonl: Path) -> None:
    config = load_config(_write_config(tmp_path / "c.toml", small_jsonl, policy="random", steps=1))
    config = config.with_overrides(
        **{"replay.concurrency": 3, "replay.max_retries": 1, "replay.timeout_s": 7.5}
    )
    seen = {}

    class Probe:
        def on_start(self, run) -> None:  # type: ignore[no-untyped-def]
            seen["config"] = run.env.unwrapped.replayer.config

        def on_promotion(self, run, version_id, decision) -> None:  # type: ignore[no-untyped-def]
            pass

        def on_finish(self, run, summary) -> None:  # type: ignore[no-untyped-def]
            pass

    run_experiment(config, out=tmp_path / "run", progress=False, callbacks=[Probe()])
    assert seen["config"] == config.replay
    assert (seen["config"].concurrency, seen["config"].timeout_s) == (3, 7.5)


def test_a_backend_that_is_down_fails_fast_and_the_run_resumes_once_it_is_up(
    tmp_path: Path, small_jsonl: Path
) -> None:
    port = _free_port()
    config = _backend_config(tmp_path / "c.toml", small_jsonl, f"http://127.0.0.1:{port}/v1")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "selfimprove_rl.cli", "run", str(config), "--out", str(out)]
    started = time.monotonic()
    failed = subprocess.run(
        [*command, "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert failed.returncode == 3, failed.stderr[-2000:]
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfimprove-rl run: error: The backend at")
    assert "16 requests in a row failed" in lines[0] and "'sim-keyword'" in lines[0]
    assert f"--resume --out {out}" in lines[0]
    assert time.monotonic() - started < 120
    assert not (out / "summary.json").exists() and (out / "config.json").exists()
    assert "0.000" not in failed.stdout

    server = subprocess.Popen(
        [sys.executable, "-m", "selfimprove_rl.cli", "serve-sim", "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        done = subprocess.run(
            [*command, "--resume", "--no-progress"], cwd=REPO, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    # The requests the first process sent while the backend was down stay counted.
    assert summary["steps"] == 2 and summary["retries"] >= summary["failures"] >= 16


def test_a_server_answering_500_to_everything_ends_the_run(
    tmp_path: Path, small_jsonl: Path
) -> None:
    from selfimprove_rl.simulated.server import running_server

    with running_server(fail_rate=1.0, kinds=("server_error",)) as base_url:
        config = _backend_config(
            tmp_path / "c.toml", small_jsonl, base_url, max_consecutive_failures=4
        )
        code = main(["run", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 3
    assert not (tmp_path / "run" / "summary.json").exists()


def test_occasional_failures_score_zero_and_are_counted(tmp_path: Path, small_jsonl: Path) -> None:
    config = load_config(_write_config(tmp_path / "c.toml", small_jsonl, policy="random", steps=5))
    config = config.with_overrides(
        **{
            "backend.faults": {"fail_rate": 0.45, "seed": 3, "kinds": ["server_error"]},
            "replay.max_retries": 1,
            "replay.backoff_initial_s": 0.001,
            "replay.backoff_max_s": 0.01,
            "replay.max_consecutive_failures": 50,
            "replay.max_failure_rate": None,
        }
    )
    result = run_experiment(config, out=tmp_path / "run", progress=False)
    summary = result.summary
    steps = list(read_jsonl(result.run_dir / "steps.jsonl"))
    assert summary["failures"] > 0 and summary["retries"] > 0
    assert summary["failures_by_reason"] == {"http_500": summary["failures"]}
    failed_requests = summary["failed_requests_by_reason"]["http_500"]
    assert failed_requests >= summary["retries"]
    assert sum(s["retries"] for s in steps) <= summary["retries"]
    assert all({"failures", "retries", "gate_calls"} <= set(s) for s in steps)
    assert 0 < sum(s["failures"] for s in steps) <= summary["failures"]


def test_max_calls_is_never_passed_and_curves_reach_the_total(
    tmp_path: Path, small_jsonl: Path
) -> None:
    import csv

    config = load_config(_write_config(tmp_path / "c.toml", small_jsonl, policy="random", steps=30))
    for budget in (45, 70):
        out = tmp_path / f"run{budget}"
        summary = run_experiment(
            config.with_overrides(**{"env.max_calls": budget}), out=out, progress=False
        ).summary
        assert summary["calls"] <= budget and summary["budget_overrun"] == 0
        assert summary["stopped_because"].startswith(("call budget", "call/token budget"))
        steps = list(read_jsonl(out / "steps.jsonl"))
        rows = list(csv.DictReader(open(out / "curves.csv", encoding="utf-8")))
        assert [r["kind"] for r in rows] == ["start"] + ["step"] * len(steps) + ["report"]
        assert int(rows[-1]["cumulative_calls"]) == summary["calls"]
        assert sum(int(r["calls"]) for r in rows) == summary["calls"]
        assert int(rows[-1]["calls"]) == summary["report_calls"]
        assert rows[0]["test_score"] != "" and float(rows[0]["test_score"]) == pytest.approx(
            summary["baseline"]["test"]
        )


def test_a_budget_below_the_final_report_is_refused_before_any_call(
    tmp_path: Path, small_jsonl: Path
) -> None:
    from selfimprove_rl.cache import ResponseCache

    config = load_config(_write_config(tmp_path / "c.toml", small_jsonl, policy="random", steps=3))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"Expects max_calls to cover .* got max_calls=10"):
        run_experiment(config.with_overrides(**{"env.max_calls": 10}), out=out, progress=False)
    assert ResponseCache(out / "cache.sqlite").ledger_seq == 0
    assert not (out / "config.json").exists()


def test_judge_calls_count_against_the_budget(tmp_path: Path) -> None:
    from selfimprove_rl.checkpoint import EvalConstants
    from selfimprove_rl.demo import JUDGE_MODEL, MATCH_CHOICES, MATCH_EVAL, MATCH_TEMPLATE
    from selfimprove_rl.mimic import load_dataset

    judged = EvalConstants(
        name=MATCH_EVAL, template=MATCH_TEMPLATE, choices=MATCH_CHOICES, eval_model=JUDGE_MODEL
    )
    checkpoint = load_dataset(
        "coffee_sports", model="sim-keyword", eval_kind="exact_match", limit=40
    )
    path = checkpoint.model_copy(update={"eval_constants": [judged]}).save(tmp_path / "c.json")
    config = parse_config(
        {
            "data": {"kind": "checkpoint", "path": str(path)},
            "target": {"model": "sim-keyword"},
            "policy": {"name": "random"},
            "env": {"minibatch_size": 8, "max_calls": 90},
            "stopping": {"max_total_steps": 30, "stagnation_steps": 30},
        }
    )
    summary = run_experiment(config, out=tmp_path / "run", progress=False).summary
    assert summary["judge_calls"] > 0 and summary["replay_calls"] > 0
    assert summary["calls"] == summary["judge_calls"] + summary["replay_calls"] <= 90
    assert summary["budget_overrun"] == 0


def test_phoenix_needs_the_integration_the_caller_wires(tmp_path: Path) -> None:
    remote = parse_config(
        {
            "data": {
                "kind": "phoenix",
                "endpoint": "http://127.0.0.1:9",
                "project": "bot",
                "since": "2026-01-01T00:00:00Z",
            }
        }
    )
    with pytest.raises(ConfigError, match="Expects a Phoenix fetcher for"):
        run_experiment(remote, out=tmp_path / "a", progress=False)
    reporting = parse_config({"phoenix": {"log_results": True, "endpoint": "http://127.0.0.1:9"}})
    with pytest.raises(ConfigError, match=re.escape("Expects Phoenix callbacks for phoenix.log")):
        run_experiment(reporting, out=tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()
