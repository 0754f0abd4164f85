"""The demo: the Phoenix workflow end to end at small scale, and the offline fallback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from selfimprove_rl.cli import main
from selfimprove_rl.demo import NEW_INPUTS, run_demo
from selfimprove_rl.telemetry.callbacks import PhoenixRunRecord
from selfimprove_rl.telemetry.server import PHOENIX_BIN_ENV


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


@pytest.mark.phoenix
def test_phoenix_demo_from_traffic_to_a_new_production_prompt(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(out=tmp_path, traffic=120, max_steps=3, progress=False, echo=lines.append)
    assert result.mode == "phoenix" and result.fallback_reason is None
    assert result.phoenix_url is not None and not _port_open(result.phoenix_url)  # stopped
    assert result.phoenix_dir == tmp_path / "phoenix"
    assert (tmp_path / "phoenix" / "phoenix.db").exists()
    assert result.traffic_calls == 120
    assert result.eval_stats["annotations_written"] == 120
    summary = result.summary
    assert summary["data"]["source"] == "phoenix"
    assert summary["data"]["phoenix_prompt"]["version_id"] == result.deployed_version
    assert summary["baseline"]["holdout"] == 0.0  # the placeholder prompt never matches
    record = PhoenixRunRecord.load(result.run_dir)
    assert summary["promoted_version"] != summary["baseline_version"]  # else-rule: test 0 -> 0.5
    assert record.production is not None
    assert result.production_version == record.production.phoenix_version_id
    assert result.production_version == record.published[-1].phoenix_version_id
    assert result.production_version != result.deployed_version
    assert {(r.split, r.role) for r in record.experiments} >= {("holdout", "baseline")}
    assert record.optimizer is not None and record.optimizer.spans > 0
    assert [text for text, _ in result.replies] == list(NEW_INPUTS)
    assert all(reply for _, reply in result.replies)
    printed = "\n".join(lines)
    assert result.phoenix_url in printed and "moved 'production'" in printed
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["mode"] == "phoenix" and saved["summary"]["holdout"] == summary["holdout"]
    assert (result.run_dir / "summary.json").exists()


def test_demo_runs_offline_when_no_phoenix_executable_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(PHOENIX_BIN_ENV, str(tmp_path / "no-phoenix-here"))
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--max-steps", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "no Phoenix server available" in printed and "offline demo" in printed
    saved = json.loads((out / "demo.json").read_text())
    assert saved["mode"] == "offline"
    assert PHOENIX_BIN_ENV in saved["fallback_reason"]
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["data"]["source"] == "mimic"
    stopped = summary["stopped_because"]
    assert summary["steps"] == 2 or (
        summary["steps"] == 1 and stopped.startswith("the gate cannot promote")
    ), stopped
    assert not (out / "run" / "phoenix.json").exists()
    assert f"run directory: {out / 'run'}" in printed


def test_demo_flags_are_checked() -> None:
    assert main(["demo", "--traffic", "0"]) == 2
