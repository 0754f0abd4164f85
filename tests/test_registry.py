from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from selfimprove_rl.errors import RegistryError
from selfimprove_rl.prompt import AddLine, PromptState, apply
from selfimprove_rl.registry import GateConfig, Registry, SplitScore, decide


def _clock() -> datetime:
    return datetime(2026, 11, 1, tzinfo=UTC)


def _score(aggregate: float, **per_eval: float) -> SplitScore:
    return SplitScore(aggregate=aggregate, per_eval=per_eval or {"a": aggregate}, n=10)


@pytest.fixture
def base_state() -> PromptState:
    return PromptState.from_text("Be kind.", model="sim-large")


def test_first_version_is_live_baseline(base_state: PromptState) -> None:
    registry = Registry(clock=_clock)
    build = registry.add(base_state, parent_id=None)
    assert registry.live_id == registry.baseline_id == build.version_id == "v0000"
    assert registry.record("v0000").status == "baseline"


def test_versions_dedupe_by_fingerprint(base_state: PromptState) -> None:
    registry = Registry(clock=_clock)
    registry.add(base_state, parent_id=None)
    new = apply(base_state, AddLine(text="Be brief."))
    first = registry.add(new, parent_id="v0000", edits=[AddLine(text="Be brief.")])
    again = registry.add(new, parent_id="v0000")
    assert first.version_id == again.version_id == "v0001"
    assert len(registry) == 2
    assert registry.lineage("v0001") == ["v0000", "v0001"]


def test_unknown_parent_and_version_raise(base_state: PromptState) -> None:
    registry = Registry(clock=_clock)
    with pytest.raises(RegistryError, match="empty"):
        _ = registry.live_id
    registry.add(base_state, parent_id=None)
    with pytest.raises(RegistryError, match=re.escape("Unknown version 'v0099'")):
        registry.add(apply(base_state, AddLine(text="x")), parent_id="v0099")


@pytest.mark.parametrize(
    ("candidate", "baseline", "promoted", "reason"),
    [
        (_score(0.70), _score(0.50), True, "test gain +0.2000 >= 0.01"),
        (_score(0.505), _score(0.50), False, "below the minimum 0.01"),
        (_score(0.40), _score(0.50), False, "regressed by 0.1000"),
        (_score(0.50), _score(0.50), False, "below the minimum"),
        (
            _score(0.80, a=1.0, b=0.6),
            _score(0.70, a=0.7, b=0.7),
            False,
            "eval 'b' regressed by 0.1000 (tolerance 0.02)",
        ),
    ],
)
def test_gate_rule(
    candidate: SplitScore, baseline: SplitScore, promoted: bool, reason: str
) -> None:
    decision = decide(
        candidate, baseline, GateConfig(min_improvement=0.01, max_eval_regression=0.02)
    )
    assert decision.promoted is promoted
    assert reason in decision.reason


def test_gate_never_promotes_a_regression(base_state: PromptState) -> None:
    registry = Registry(clock=_clock)
    registry.add(base_state, parent_id=None)
    registry.record_scores("v0000", "test", _score(0.8))
    worse = registry.add(apply(base_state, AddLine(text="worse")), parent_id="v0000")
    registry.record_scores(worse.version_id, "minibatch", _score(1.0))
    registry.record_scores(worse.version_id, "test", _score(0.6))
    decision = registry.gate(worse.version_id, GateConfig())
    assert not decision.promoted
    assert registry.live_id == "v0000"
    assert registry.record(worse.version_id).status == "rejected"


def test_gate_requires_test_scores(base_state: PromptState) -> None:
    registry = Registry(clock=_clock)
    registry.add(base_state, parent_id=None)
    new = registry.add(apply(base_state, AddLine(text="x")), parent_id="v0000")
    with pytest.raises(RegistryError, match="has no test score"):
        registry.gate(new.version_id, GateConfig())


def test_log_is_append_only_and_reloads(tmp_path, base_state: PromptState) -> None:
    path = tmp_path / "versions.jsonl"
    registry = Registry(path, clock=_clock)
    registry.add(base_state, parent_id=None)
    registry.record_scores("v0000", "test", _score(0.5), calls=40, tokens=900)
    better = registry.add(apply(base_state, AddLine(text="better")), parent_id="v0000")
    registry.record_scores(better.version_id, "test", _score(0.9), calls=40, tokens=1000)
    assert registry.gate(better.version_id, GateConfig()).promoted
    lines_before = path.read_text().splitlines()

    reloaded = Registry(path, clock=_clock)
    assert reloaded.live_id == better.version_id
    assert reloaded.record("v0000").calls == 40
    assert reloaded.record(better.version_id).scores["test"].aggregate == 0.9
    assert [e["event"] for e in map(json.loads, lines_before)] == [
        "version",
        "scores",
        "version",
        "scores",
        "decision",
    ]
    assert reloaded.rollback() == "v0000"
    assert path.read_text().splitlines()[: len(lines_before)] == lines_before
    assert Registry(path).live_id == "v0000"
    assert reloaded.best("test") == better.version_id


def test_rollback_rules(base_state: PromptState) -> None:
    registry = Registry(clock=_clock)
    registry.add(base_state, parent_id=None)
    with pytest.raises(RegistryError, match="the live build is the baseline"):
        registry.rollback()
    other = registry.add(apply(base_state, AddLine(text="x")), parent_id="v0000")
    with pytest.raises(RegistryError, match="was never promoted"):
        registry.rollback(to=other.version_id)


def test_corrupt_log_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "versions.jsonl"
    path.write_text('{"event": "mystery"}\n{"event": "version"}\n')
    with pytest.raises(RegistryError, match="event 1 is invalid"):
        Registry(path)


def test_truncate_log_cuts_what_a_killed_step_wrote(tmp_path, base_state: PromptState) -> None:
    from selfimprove_rl.registry import truncate_log

    path = tmp_path / "versions.jsonl"
    registry = Registry(path)
    registry.add(base_state, parent_id=None)
    committed = registry.events
    registry.add(apply(base_state, AddLine(text="Be brief.")), parent_id=registry.live_id)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"event": "scores", "torn')
    assert truncate_log(path, committed) == 2
    reloaded = Registry(path)
    assert len(reloaded) == 1 and reloaded.events == committed == 1
    assert truncate_log(path, committed) == 0
    with pytest.raises(RegistryError, match="holds 1 complete events but 3 were committed"):
        truncate_log(path, 3)
