"""What does ``make demo`` show? The main job on the embedded default, no API key needed.

The offline demo runs the coffee/sports experiment on the simulated model: the rule-induction
coach edits a placeholder SOP prompt, every improvement is gated on the test split, and the
promoted build is reported on holdout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from selfimprove_rl.config import ExperimentConfig, parse_config

DEMO_CONFIG: dict[str, Any] = {
    "name": "demo-coffee_sports",
    "seed": 0,
    "data": {"kind": "dataset", "path": "coffee_sports"},
    "target": {"model": "sim-large"},
    "policy": {"name": "rule_induction"},
    "env": {"minibatch_size": 32, "max_steps": 10, "target_score": 0.99},
    "stopping": {"max_total_steps": 20, "stagnation_steps": 8, "test_threshold": 0.98},
}


def demo_config() -> ExperimentConfig:
    """Return the demo's experiment config (the same as experiments/configs/coffee_sports.toml)."""
    return parse_config(DEMO_CONFIG, source="demo")


def run_demo(*, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the offline demo and return its summary (also in ``<run dir>/summary.json``)."""
    from selfimprove_rl.runner import run_experiment

    config = demo_config()
    run_dir = out or Path(config.out_dir) / f"demo-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    return run_experiment(config, out=run_dir, progress=progress).summary
