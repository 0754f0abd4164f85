"""The real local model (Qwen2.5-Coder-0.5B-Instruct Q4 behind llama.cpp's server).

Marked ``llm``: deselected by plain ``pytest``/``make test``; ``make test-llm`` runs them. They
skip with the reason when the model is not set up (``make llm``). One server is shared by the
session (the ``local_llm`` fixture); every call here takes a second or more on 2 cores.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfimprove_rl.backend import Backend
from selfimprove_rl.local_llm import DEFAULT_ALIAS, QWEN_CODER_05B, LlamaServer, verify_model

pytestmark = pytest.mark.llm


def test_the_assembled_model_passes_the_checksum(local_llm: Backend) -> None:
    from selfimprove_rl.local_llm import find_model

    assert verify_model(find_model()).stat().st_size == QWEN_CODER_05B.size


def test_the_server_lists_its_alias_and_answers_the_same_twice(local_llm: Backend) -> None:
    client = local_llm.sync_client()
    assert [m.id for m in client.models.list().data] == [DEFAULT_ALIAS]
    messages = [
        {"role": "system", "content": "Reply with exactly one word: yes or no."},
        {"role": "user", "content": "Is the sky blue on a clear day?"},
    ]
    replies = [
        client.chat.completions.create(
            model=DEFAULT_ALIAS, messages=messages, temperature=0, seed=0, max_tokens=5
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert replies[0] and replies[0] == replies[1]


def test_a_tiny_run_on_the_real_model(local_llm: Backend, tmp_path: Path) -> None:
    from selfimprove_rl.config import parse_config
    from selfimprove_rl.mimic import dataset_path
    from selfimprove_rl.runner import run_experiment

    lines = dataset_path("support_intents").read_text(encoding="utf-8").splitlines()[:20]
    data = tmp_path / "small.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = parse_config(
        {
            "name": "tiny_real",
            "backend": {"kind": "local_llm"},
            "data": {"kind": "mimic", "path": str(data)},
            "env": {"minibatch_size": 4},
            "policy": {"name": "rule_induction"},
            "stopping": {"max_total_steps": 1},
        }
    )
    summary = run_experiment(config, out=tmp_path / "run", progress=False).summary
    assert summary["backend"] == f"local llama.cpp ({DEFAULT_ALIAS})"
    assert summary["model"] == DEFAULT_ALIAS and summary["calls"] > 0
    assert 0.0 <= summary["holdout"] <= 1.0


def test_serve_llm_serves_until_interrupted(local_llm: Backend) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "selfimprove_rl.cli", "serve-llm", "--alias", "probe"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = LlamaServer()
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "as 'probe' at http://127.0.0.1:" in first, first
        server.port = int(first.rsplit(":", 1)[1].split("/")[0])
        assert server.models() == ["probe"]
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    assert code == 0
    deadline = time.monotonic() + 15
    while server.models() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.models() is None, "the server stops with the command"
