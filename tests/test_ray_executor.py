"""A comparison over Ray (a local instance this module starts) gives the local executor's table."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from selfimprove_rl.compare import (
    LocalExecutor,
    load_compare_config,
    markdown_table,
    run_compare,
)
from selfimprove_rl.mimic import load_dataset
from selfimprove_rl.ray_executor import RayExecutor, run_shipped, unpack_dir

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
max_total_steps = 4
stagnation_steps = 4
[compare]
seeds = 2
budget_calls = 100
threshold = 0.5

[[compare.policies]]
name = "random"

[[compare.policies]]
name = "ucb1"
kwargs = {{ proposer = "operators", arms = 2 }}
"""


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ray-config")
    checkpoint = folder / "checkpoint.json"
    load_dataset("coffee_sports", model="sim-keyword", eval_kind="exact_match", limit=60).save(
        checkpoint
    )
    path = folder / "tiny.toml"
    path.write_text(CONFIG.format(checkpoint=checkpoint), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    # On a loaded machine the raylet's 30 s wait for its agents' ports ends the start-up.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def test_compare_over_ray_gives_the_local_table(
    ray_session: None, config_path: Path, tmp_path: Path
) -> None:
    experiment, compare = load_compare_config(config_path)
    policies = ["random", "ucb1", "no_such_policy"]
    local = run_compare(
        experiment,
        compare,
        policies=policies,
        out=tmp_path / "local",
        progress=False,
        executor=LocalExecutor(1),
    )
    started = time.perf_counter()
    remote = run_compare(
        experiment,
        compare,
        policies=policies,
        out=tmp_path / "ray",
        progress=False,
        executor=RayExecutor(),
    )
    print(f"compare over Ray: {len(remote.runs)} runs in {time.perf_counter() - started:.1f} s")
    assert ray.is_initialized(), "a session the caller started is left up"
    assert markdown_table(remote.rows) == markdown_table(local.rows)
    for name in ("compare.csv", "compare.md"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    assert [r.model_dump(exclude={"run_dir"}) for r in remote.runs] == [
        r.model_dump(exclude={"run_dir"}) for r in local.runs
    ]
    assert [r.run_dir for r in remote.runs] == [
        r.run_dir.replace(str(tmp_path / "local"), str(tmp_path / "ray")) for r in local.runs
    ]
    done = [r for r in remote.runs if r.error is None]
    assert len(done) == 4 and all(r.calls is not None and r.calls <= 100 for r in done)
    assert all("Unknown policy 'no_such_policy'" in (r.error or "") for r in remote.runs[4:])
    for run in done:
        summary = json.loads((Path(run.run_dir) / "summary.json").read_text())
        assert summary["test"] == run.test


def test_a_run_on_another_node_brings_its_checkpoint_and_sends_its_directory_back(
    config_path: Path, tmp_path: Path
) -> None:
    """What a task does on a node without the driver's files (called here without Ray)."""
    experiment, _ = load_compare_config(config_path)
    node_checkpoint = tmp_path / "node" / "checkpoint.json"
    text = Path(experiment.data.path).read_text(encoding="utf-8")
    config = experiment.with_overrides(
        **{"data.path": str(node_checkpoint), "env.max_calls": 100, "policy.name": "random"}
    )
    run_dir = tmp_path / "node" / "runs" / "random" / "seed-0"
    record, archive = run_shipped(
        (config.model_dump_json(), "random", str(run_dir)),
        0.5,
        (str(node_checkpoint), text),
        [str(tmp_path)],
    )
    assert record.error is None and node_checkpoint.read_text(encoding="utf-8") == text
    assert archive is not None
    driver = tmp_path / "driver" / "seed-0"
    assert unpack_dir(archive, driver) is True
    assert sorted(p.name for p in driver.iterdir()) == sorted(p.name for p in run_dir.iterdir())
    assert (driver / "summary.json").read_bytes() == (run_dir / "summary.json").read_bytes()
    assert unpack_dir(archive, run_dir) is False, "a run directory already there is kept"
