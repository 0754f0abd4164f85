"""The sequential gate in a real run: what it records, how it spends alpha, how it orders."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from selfimprove_rl.config import load_config, parse_config
from selfimprove_rl.errors import RegistryError
from selfimprove_rl.fileio import read_jsonl
from selfimprove_rl.gate import promotion_ceiling, sample_order
from selfimprove_rl.mimic import dataset_path
from selfimprove_rl.prompt import PromptState
from selfimprove_rl.registry import GateConfig, GateDecision, Registry, SplitScore
from selfimprove_rl.runner import run_experiment
from selfimprove_rl.sequential import spent_alpha


@pytest.fixture(scope="module")
def mimic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 coffee/sports lines: 16 test samples, two chunks of eight."""
    lines = dataset_path("coffee_sports").read_text(encoding="utf-8").splitlines()[:80]
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_every_decision_records_its_samples_bounds_and_level(
    tmp_path: Path, mimic_file: Path
) -> None:
    config = parse_config(
        {
            "name": "gate",
            "seed": 3,
            "data": {"kind": "mimic", "path": str(mimic_file)},
            "target": {"model": "sim-keyword"},
            "policy": {"name": "random"},
            "env": {"minibatch_size": 8, "max_steps": 4},
            "gate": {"alpha_spending": "per_run"},
            "stopping": {"max_total_steps": 6, "stagnation_steps": 100},
        }
    )
    result = run_experiment(config, out=tmp_path / "run", progress=False)
    registry = Registry(result.run_dir / "versions.jsonl")
    steps = list(read_jsonl(result.run_dir / "steps.jsonl"))
    gated = [s for s in steps if s["gate"]]
    assert len(gated) == len(registry.decisions)
    for number, (line, decision) in enumerate(zip(gated, registry.decisions, strict=True), 1):
        assert decision.method == "sequential"
        assert decision.n is not None and decision.n_split == 16
        assert decision.n == 16 or decision.n % config.gate.chunk_size == 0
        assert decision.lower is not None and decision.upper is not None
        assert decision.lower <= decision.delta <= decision.upper
        assert decision.gate_index == number
        assert decision.alpha == pytest.approx(spent_alpha(0.05, number, "inverse_square"))
        assert decision.promoted == (
            decision.lower > config.gate.min_improvement and not decision.regressions
        )
        assert line["gate_calls"] == decision.calls
        # the gate scored no build on the whole test split; the report does, at the end
        assert "test" not in registry.record(decision.candidate_id).scores or (
            decision.candidate_id == result.summary["promoted_version"]
        )
    assert result.summary["n"]["test"] == 16


def test_each_gate_draws_its_own_reproducible_order() -> None:
    first = sample_order(40, seed=0, gate_number=1)
    assert first == sample_order(40, seed=0, gate_number=1)
    assert first != sample_order(40, seed=0, gate_number=2)
    assert first != sample_order(40, seed=1, gate_number=1)
    assert sorted(first) == list(range(40))


def _registry() -> tuple[Registry, str, str]:
    clock = iter(datetime(2026, 1, 1, tzinfo=UTC).replace(minute=m) for m in range(60))
    registry = Registry(clock=lambda: next(clock))
    base = registry.add(PromptState.from_text("Be kind.", model="m"), parent_id=None)
    new = registry.add(
        PromptState.from_text("Be kind and brief.", model="m"), parent_id=base.version_id
    )
    return registry, base.version_id, new.version_id


def _decision(candidate: str, live: str, promoted: bool) -> GateDecision:
    return GateDecision(
        candidate_id=candidate,
        baseline_id=live,
        promoted=promoted,
        delta=0.3,
        reason="test",
        method="sequential",
        n=8,
        n_split=40,
        lower=0.1,
        upper=0.5,
        alpha=0.03,
        gate_index=1,
        candidate_score=0.9,
        live_score=0.6,
    )


def test_a_sequential_decision_gives_both_builds_a_test_estimate() -> None:
    registry, base, new = _registry()
    assert registry.test_estimate(base) is None
    registry.record_decision(_decision(new, base, promoted=True))
    assert registry.live_id == new
    assert registry.test_estimate(new) == SplitScore(aggregate=0.9, per_eval={}, n=8)
    assert registry.test_estimate(base) == SplitScore(aggregate=0.6, per_eval={}, n=8)
    full = SplitScore(aggregate=0.7, per_eval={"a": 0.7}, n=40)
    registry.record_scores(new, "test", full)
    assert registry.test_estimate(new) == full
    assert registry.gates_against(base) == 1


def test_a_decision_must_gate_a_new_candidate_against_the_live_build() -> None:
    registry, base, new = _registry()
    with pytest.raises(RegistryError, match=re.escape("against the live build v0000")):
        registry.record_decision(_decision(base, new, promoted=True))
    registry.record_decision(_decision(new, base, promoted=False))
    with pytest.raises(RegistryError, match=re.escape("Version v0001 is rejected already")):
        registry.record_decision(_decision(new, base, promoted=True))


def test_the_threshold_stops_a_run_only_on_the_whole_test_split(tmp_path: Path) -> None:
    """A gate's early 1.0 on 16 samples is confirmed on all 32 before it may stop the run."""
    config = load_config(
        "coffee_sports",
        settings=[
            "seed=1",
            "stopping.max_total_steps=2",
            "stopping.stagnation_steps=100",
            "stopping.when_gate_cannot_promote=false",
            "policy.kwargs.scaffold_demos=0",  # the rules alone: an early 1.0, then less
        ],
    )
    threshold = config.stopping.test_threshold
    assert threshold is not None
    result = run_experiment(config, out=tmp_path / "run", progress=False)
    registry = Registry(result.run_dir / "versions.jsonl")
    first = registry.decisions[0]
    assert first.promoted and first.n is not None and first.n < first.n_split
    assert first.candidate_score is not None and first.candidate_score >= threshold
    whole = registry.record(first.candidate_id).scores["test"]
    assert whole.n == first.n_split and whole.aggregate < threshold
    assert result.summary["stopped_because"] == "reached max_total_steps=2"


def test_the_ceiling_is_reached_when_not_even_a_perfect_candidate_could_pass() -> None:
    registry, _, _ = _registry()
    sequential, full = GateConfig(), GateConfig(mode="full_split", min_improvement=0.05)
    one_miss = [1.0] * 39 + [0.0]
    reason = promotion_ceiling(one_miss, registry, sequential, seed=0)
    assert "leaves 0.0250 to gain on the 40 test samples" in reason
    assert "no candidate can be promoted" in reason
    # Everything to gain: a perfect candidate would be certified, so the run goes on.
    assert promotion_ceiling([0.0] * 40, registry, sequential, seed=0) == ""
    # Full-split mode compares the mean headroom with min_improvement.
    assert promotion_ceiling(one_miss, registry, full, seed=0).startswith("the live build")
    assert promotion_ceiling([0.9] * 40, registry, full, seed=0) == ""


def test_a_run_stops_once_the_gate_cannot_promote_anything(tmp_path: Path) -> None:
    """On 40 test samples the gate cannot certify the last few points: the run stops there."""
    settings = ["seed=1", "stopping.max_total_steps=4", "stopping.stagnation_steps=100"]
    result = run_experiment(
        load_config("coffee_sports", settings=settings), out=tmp_path / "on", progress=False
    )
    registry = Registry(result.run_dir / "versions.jsonl")
    steps = list(read_jsonl(result.run_dir / "steps.jsonl"))
    assert result.summary["stopped_because"].startswith("the gate cannot promote: ")
    assert registry.live_id != "v0000" and len(steps) < 4
    # It knows because the live build was scored on the whole split, which the report reuses.
    live_test = registry.record(registry.live_id).scores["test"]
    assert live_test.n == 40 and live_test.aggregate == result.summary["test"]
    off = run_experiment(
        load_config(
            "coffee_sports", settings=[*settings, "stopping.when_gate_cannot_promote=false"]
        ),
        out=tmp_path / "off",
        progress=False,
    )
    assert off.summary["stopped_because"] == "reached max_total_steps=4"
