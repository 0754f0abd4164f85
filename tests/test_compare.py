from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from selfimprove_rl.cli import main
from selfimprove_rl.compare import (
    CompareConfig,
    RunRecord,
    load_compare_config,
    markdown_table,
    parse_compare,
    run_compare,
    select_policies,
    summarise_run,
    table_rows,
)
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.mimic import load_dataset
from selfimprove_rl.stats import paired_difference, t_interval

CONFIG = """
name = "tiny"
[data]
kind = "checkpoint"
path = "{checkpoint}"
[target]
model = "sim-keyword"
[env]
minibatch_size = 8
max_steps = 4
target_score = 0.99
[stopping]
max_total_steps = 5
stagnation_steps = 5
[compare]
seeds = 2
budget_calls = 120
threshold = 0.5
jobs = 1

[[compare.policies]]
name = "random"

[[compare.policies]]
name = "ucb1"
kwargs = {{ proposer = "operators", arms = 2 }}

[[compare.policies]]
name = "policies.bandits:ThompsonPolicy"
label = "my-thompson"
kwargs = {{ proposer = "operators", arms = 2, posterior = "beta" }}
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    checkpoint = tmp_path / "checkpoint.json"
    load_dataset("coffee_sports", model="sim-keyword", eval_kind="exact_match", limit=60).save(
        checkpoint
    )
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG.format(checkpoint=checkpoint), encoding="utf-8")
    return path


def test_compare_command_writes_table_plot_and_runs(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["compare", str(config_path), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| my-thompson | 2 |" in printed and f"comparison: {out}" in printed
    with open(out / "compare.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["policy"] for r in rows] == ["random", "ucb1", "my-thompson"]
    assert all(r["runs"] == "2" and r["failed"] == "0" for r in rows)
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["policy"], r["seed"]) for r in runs] == [
        (p, s) for p in ("random", "ucb1", "my-thompson") for s in (0, 1)
    ]
    for run in runs:
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        config = json.loads((Path(run["run_dir"]) / "config.json").read_text())
        assert config["env"]["max_calls"] == 120
        assert config["data"]["path"] == str((out / "checkpoint.json").resolve())
        assert summary["calls"] == run["calls"] and summary["test"] == run["test"]
        assert run["calls"] <= 120, "the budget holds, gate and final report included"
    # Every run of a policy shares the checkpoint, so the baseline test score is shared too.
    assert len({r["baseline_test"] for r in runs}) == 1
    for row in rows:
        tests = [r["test"] for r in runs if r["policy"] == row["policy"]]
        interval = t_interval(tests)
        assert float(row["test_mean"]) == pytest.approx(interval.mean)
        assert float(row["test_low"]) == pytest.approx(interval.low)
        assert float(row["test_high"]) == pytest.approx(interval.high)
        assert 0.0 <= float(row["test_low"]) <= float(row["test_high"]) <= 1.0
        assert row["test_n"] == "2" and row["reference"] == "random"
    assert rows[0]["test_diff_mean"] == "" and rows[1]["test_diff_n"] == "2"
    markdown = (out / "compare.md").read_text()
    assert markdown.startswith("# tiny: 120 calls per run") and "| ucb1 | 2 |" in markdown
    assert "Paired by seed against random" in markdown
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_policies_flag_picks_config_entries_and_a_failed_run_is_counted(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "compare", str(config_path), "--out", str(out), "--no-progress",
            "--policies", "ucb1,no_such_policy", "--seeds", "1", "--budget-calls", "90",
        ]
    )  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert "run no_such_policy seed 0 failed: PolicyError: Unknown policy" in captured.err
    rows = list(csv.DictReader(open(out / "compare.csv", encoding="utf-8")))
    assert [(r["policy"], r["runs"], r["failed"]) for r in rows] == [
        ("ucb1", "1", "0"),
        ("no_such_policy", "0", "1"),
    ]
    config = json.loads((out / "runs" / "ucb1" / "seed-0" / "config.json").read_text())
    assert config["policy"] == {"name": "ucb1", "kwargs": {"proposer": "operators", "arms": 2}}
    assert config["env"]["max_calls"] == 90


def test_runs_in_worker_processes(config_path: Path, tmp_path: Path) -> None:
    experiment, compare = load_compare_config(config_path)
    compare = compare.model_copy(update={"jobs": 2, "seeds": 2})
    result = run_compare(
        experiment, compare, policies=["random"], out=tmp_path / "par", progress=False
    )
    assert [(r.policy, r.seed, r.error) for r in result.runs] == [
        ("random", 0, None),
        ("random", 1, None),
    ]
    assert all(r.curve for r in result.runs)
    assert (tmp_path / "par" / "compare.png").exists()


def test_a_comparison_needs_a_budget_policies_and_an_empty_folder(
    config_path: Path, tmp_path: Path
) -> None:
    experiment, compare = load_compare_config(config_path)
    with pytest.raises(ConfigError, match=re.escape("set [compare] budget_calls = N")):
        run_compare(
            experiment, compare.model_copy(update={"budget_calls": None}), out=tmp_path / "a"
        )
    with pytest.raises(ConfigError, match="No policies to compare"):
        select_policies(CompareConfig(), None)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):
        run_compare(experiment, compare, out=taken)


def test_compare_section_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"compare\.seeds: Input should be greater than or equal"):
        parse_compare({"seeds": 0})
    with pytest.raises(ConfigError, match=r"compare\.budget: Extra inputs are not permitted"):
        parse_compare({"budget": 5})
    with pytest.raises(ConfigError, match=r"policy labels must be unique; duplicated: \['a'\]"):
        parse_compare({"policies": [{"name": "a"}, {"name": "b", "label": "a"}]})


def test_table_rows_clip_intervals_and_pair_runs_by_seed() -> None:
    def run(policy: str, seed: int, test: float, holdout: float) -> RunRecord:
        return RunRecord(
            policy=policy, seed=seed, run_dir="", test=test, holdout=holdout, calls=100,
            tokens=1000, steps=3,
        )  # fmt: skip

    records = [
        run("base", 0, 0.2, 0.25), run("base", 1, 0.9, 0.8),
        run("new", 0, 0.3, 0.3), run("new", 1, 1.0, 0.9), run("new", 2, 0.7, 0.7),
    ]  # fmt: skip
    base, new = table_rows(records, ["base", "new"], 0.5, reference="base")
    assert base["test_mean"] == pytest.approx(0.55) and base["test_n"] == 2
    assert (base["test_low"], base["test_high"]) == (0.0, 1.0), "clipped to the score range"
    assert math.isnan(base["test_diff_mean"])
    assert new["test_diff_n"] == 2, "only seeds both policies ran are paired"
    assert new["test_diff_mean"] == pytest.approx(0.1) and new["test_diff_p"] == 0.0
    expected = paired_difference({0: 0.3, 1: 0.9}, {0: 0.25, 1: 0.8})
    assert new["holdout_diff_mean"] == pytest.approx(expected.mean)
    assert new["holdout_diff_p"] == pytest.approx(expected.p_value)
    text = markdown_table([base, new])
    assert "| base | 2 | 0.550 [0.000, 1.000] |" in text
    assert "| new | 2 | +0.100 [+0.100, +0.100] | 0.000 |" in text


def test_steps_to_threshold_follow_the_live_test_score(tmp_path: Path) -> None:
    lines = [
        {"step": 1, "reward": 0.1, "calls": 20, "cumulative_calls": 20, "live_test": None},
        {"step": 2, "reward": 0.3, "calls": 30, "cumulative_calls": 50, "live_test": 0.6},
        {"step": 3, "reward": 0.0, "calls": 10, "cumulative_calls": 60, "live_test": 0.9},
        {"step": 4, "reward": 0.2, "calls": 30, "cumulative_calls": 90, "live_test": 0.95},
    ]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = {
        "test": 0.95, "holdout": 0.93, "calls": 130, "tokens": 999, "steps": 4,
        "baseline": {"test": 0.2},
    }  # fmt: skip
    record = summarise_run("p", 0, tmp_path, summary, threshold=0.85)
    assert (record.steps_to_threshold, record.calls_to_threshold) == (3, 60)
    assert record.curve == [(0, 0.2), (20, 0.2), (50, 0.6), (60, 0.9), (90, 0.95), (130, 0.95)]
    assert summarise_run("p", 0, tmp_path, summary, threshold=0.99).steps_to_threshold is None
    assert summarise_run("p", 0, tmp_path, summary, threshold=0.1).steps_to_threshold == 0


def test_a_worker_that_dies_is_explained(
    config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "crashing_policy.py").write_text(
        "import os\n\n\nclass Crash:\n    def __init__(self, seed=None):\n        os._exit(3)\n\n"
        "    def act(self, observation, info):\n        return 'no_change'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    experiment, compare = load_compare_config(config_path)
    compare = compare.model_copy(update={"jobs": 2, "seeds": 2})
    with pytest.raises(ConfigError, match="A compare worker process died"):
        run_compare(
            experiment,
            compare,
            policies=["crashing_policy:Crash"],
            out=tmp_path / "o",
            progress=False,
        )
