"""The peers table's aggregation and verdict (benchmarks/peers/table.py), on made-up rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from peers.common import CurvePoint, ResultStore, RowResult, ScoredPrompt
from peers.table import aggregate, calls_to_reach, markdown, write_outputs


def _row(row: str, kind: str, seed: int, holdout: float, calls: int, **extra: Any) -> RowResult:
    return RowResult(
        target="local",
        model="m",
        dataset="support_intents",
        row=row,
        kind=kind,  # type: ignore[arg-type]
        seed=seed,
        budget_calls=100,
        holdout=holdout,
        holdout_source="replay",
        target_calls=calls,
        other_calls=0,
        wall_s=1.0,
        **extra,
    )


def _curve(*points: tuple[int, float]) -> list[CurvePoint]:
    return [CurvePoint(calls=c, holdout=h) for c, h in points]


def test_calls_to_reach_is_the_first_promotion_at_or_above_the_threshold() -> None:
    result = _row("ucb1", "ours", 0, 0.7, 90, curve=_curve((0, 0.0), (30, 0.4), (60, 0.6)))
    assert calls_to_reach(result, 0.6) == 60
    assert calls_to_reach(result, 0.4) == 30
    assert calls_to_reach(result, 0.61) is None


def test_aggregate_reads_the_best_peer_and_our_calls_to_reach_it() -> None:
    results = [
        _row("gepa", "peer", 0, 0.5, 100),
        _row("gepa", "peer", 1, 0.7, 100),
        _row("dspy_bootstrap", "peer", 0, 0.2, 10),
        _row("ucb1", "ours", 0, 0.8, 100, curve=_curve((0, 0.0), (20, 0.6), (50, 0.8))),
        _row("ucb1", "ours", 1, 0.5, 100, curve=_curve((0, 0.0), (40, 0.5))),
        _row("seed", "seed", 0, 0.0, 0),
    ]
    rows = {r["row"]: r for r in aggregate(results)}
    assert [r["row"] for r in aggregate(results)] == ["seed", "dspy_bootstrap", "gepa", "ucb1"]
    assert rows["gepa"]["holdout"] == pytest.approx(0.6)
    assert rows["gepa"]["seeds"] == 2 and rows["gepa"]["holdout_ci95"] > 0
    assert rows["ucb1"]["best_peer"] == "gepa"
    assert rows["ucb1"]["calls_to_best_peer_per_seed"] == [20, None]
    assert rows["ucb1"]["reached_best_peer"] == "1/2"
    text = markdown(list(rows.values()))
    assert "| ours: ucb1 | 0.650 ± " in text
    assert "At or above every peer: yes" in text
    assert "in ≤ half its calls: yes (20 calls, 1/2 seeds)" in text


def test_outputs_pair_real_and_simulated_scores_for_real_targets_only(tmp_path: Path) -> None:
    prompt = ScoredPrompt(label="p", how="replay", score=0.5, sim=0.9, n=2)
    real = _row("gepa", "peer", 0, 0.5, 100, prompts=[prompt])
    on_sim = real.model_copy(update={"target": "sim"})
    store = ResultStore(tmp_path)
    store.save(real)
    store.save(on_sim)
    results = store.all()
    write_outputs(aggregate(results), results, tmp_path)
    entries = json.loads((tmp_path / "peers_prompts.json").read_text())
    paired = [e for e in entries if "sim_large" in e]
    assert [(e["target"], e["data"], e["holdout"], e["sim_large"]) for e in paired] == [
        ("local", "support_intents", 0.5, 0.9)
    ]
    assert (tmp_path / "peers_table.csv").read_text().startswith("target,model,dataset,row")
