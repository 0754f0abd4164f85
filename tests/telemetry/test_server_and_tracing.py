"""The Phoenix server process, the executable lookup, and the optional tracing helper."""

from __future__ import annotations

import os
import stat
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import selfimprove_rl.telemetry as telemetry
from selfimprove_rl.errors import ConfigError, TelemetryError
from selfimprove_rl.telemetry.server import PHOENIX_BIN_ENV, PhoenixServer, find_phoenix_executable
from selfimprove_rl.telemetry.tracing import split_endpoint

from .conftest import send_traffic, wait_until


def test_public_api_matches_all() -> None:
    exported = {name for name in dir(telemetry) if not name.startswith("_")}
    modules = {"builder", "frames", "instrument", "publish", "server", "source", "tracing"}
    modules |= {"callbacks", "optimizer_tracing", "program_builder", "run_record", "wiring"}
    assert set(telemetry.__all__) == exported - modules


def test_executable_from_env_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PHOENIX_BIN_ENV, str(tmp_path / "missing"))
    with pytest.raises(TelemetryError, match="make install"):
        find_phoenix_executable()


def fake_phoenix(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "phoenix"
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_a_server_that_dies_reports_its_log(tmp_path: Path) -> None:
    exe = fake_phoenix(tmp_path, 'echo "boom: no database"; exit 3')
    server = PhoenixServer(tmp_path / "wd", executable=exe, startup_timeout=10)
    with pytest.raises(TelemetryError, match=r"(?s)exited with code 3.*boom: no database"):
        server.start()
    assert not server.running


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    exe = fake_phoenix(tmp_path, 'echo "starting slowly"; exec sleep 60')
    server = PhoenixServer(tmp_path / "wd", executable=exe, startup_timeout=1.5, stop_grace=2)
    with pytest.raises(TelemetryError, match=r"(?s)within 2 s.*starting slowly"):
        server.start()
    assert not server.running


@pytest.mark.phoenix
def test_session_server_is_healthy_and_isolated(phoenix_server: Any) -> None:
    with urllib.request.urlopen(f"{phoenix_server.url}/healthz", timeout=5) as response:
        assert response.status == 200
    assert phoenix_server.host == "127.0.0.1"
    assert phoenix_server.grpc_port != 4317 and phoenix_server.port != 6006
    env = phoenix_server.environment()
    assert env["PHOENIX_TELEMETRY_ENABLED"] == "false"
    assert env["PHOENIX_SQL_DATABASE_URL"].endswith(str(phoenix_server.working_dir / "phoenix.db"))
    assert (phoenix_server.working_dir / "phoenix.db").exists()
    assert phoenix_server.traces_endpoint == f"{phoenix_server.url}/v1/traces"


def test_split_endpoint_always_names_the_http_path() -> None:
    assert split_endpoint("http://h:1/") == ("http://h:1", "http://h:1/v1/traces")
    assert split_endpoint("https://h/phoenix/v1/traces") == (
        "https://h/phoenix",
        "https://h/phoenix/v1/traces",
    )
    with pytest.raises(ConfigError, match="Expects a Phoenix URL"):
        split_endpoint("localhost:6006")


@pytest.mark.phoenix
def test_setup_tracing_sends_openai_calls_over_http(
    phoenix_server: Any, px_client: Any, project: str
) -> None:
    provider = telemetry.setup_tracing(phoenix_server.url, project, batch=True)
    try:
        with pytest.raises(ConfigError, match="already instrumented"):
            telemetry.setup_tracing(phoenix_server.url, project)
        send_traffic(["I love espresso"])
    finally:
        telemetry.teardown_tracing(provider)  # flushes the batch
    telemetry.teardown_tracing(provider)  # idempotent
    wait_until(lambda: len(px_client.spans.get_spans_dataframe(project_identifier=project)) == 1)
    spans = px_client.spans.get_spans(project_identifier=project, span_kind="LLM")
    assert spans[0]["attributes"]["llm.model_name"] == "sim-large"
    send_traffic(["not traced any more"])
    assert len(px_client.spans.get_spans(project_identifier=project)) == 1
    assert os.environ.get("PHOENIX_DISCOVER_CONFIG") == "false"
