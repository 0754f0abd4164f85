"""How is the local model served? ``llama_cpp.server`` as a process: start, wait, stop.

The small real model runs behind llama-cpp-python's OpenAI-compatible server, a component
started like the Phoenix server: its own virtualenv (``.venv-llm``, made by ``make llm``), a
free port on 127.0.0.1, a health wait on ``/v1/models``, the tail of its log in the error when
it does not come up, SIGTERM then SIGKILL to stop. :func:`find_llm_python` locates the
interpreter; :func:`selfimprove_rl.local_llm.weights.find_model` the weights.

Runs share one server per set of :class:`LocalLLMOptions` in a process: :func:`shared_server`
starts it on first use and stops it when the last user leaves (and at interpreter exit), so
the env, its judge and an LLM coach on the same model reach the same process.

Example:
    >>> from selfimprove_rl.local_llm import LlamaServer
    >>> with LlamaServer() as server:  # doctest: +SKIP
    ...     print(server.base_url)
    http://127.0.0.1:54321/v1
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from selfimprove_rl.errors import LocalModelError
from selfimprove_rl.local_llm.weights import QWEN_CODER_05B, check_gguf, find_model, verify_model
from selfimprove_rl.processes import free_port, log_tail, terminate

if TYPE_CHECKING:
    import subprocess

LLM_PYTHON_ENV = "SELFIMPROVE_LLM_PYTHON"
LLM_VENV = ".venv-llm"
DEFAULT_ALIAS = "qwen2.5-coder-0.5b"
_REPO_ROOT = Path(__file__).resolve().parents[2]


class LocalLLMOptions(BaseModel):
    """How the local model server is started (``[backend.local]`` in a config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: str | None = Field(
        default=None, description="GGUF file (default: the model `make llm` assembles)."
    )
    alias: str = Field(
        default=DEFAULT_ALIAS,
        min_length=1,
        pattern=r"\S",
        description="The model name the server answers to.",
    )
    n_ctx: int = Field(default=4096, ge=256, description="Context window in tokens.")
    n_threads: int | None = Field(
        default=None, ge=1, description="CPU threads (default: every core)."
    )
    seed: int = Field(default=0, description="The server's sampling seed.")
    python: str | None = Field(
        default=None,
        description="Python with llama-cpp-python (default: see find_llm_python).",
    )
    startup_timeout_s: float = Field(
        default=180.0, gt=0, description="Seconds to wait for /v1/models to answer."
    )


def find_llm_python(configured: str | os.PathLike[str] | None = None) -> Path:
    """Locate the interpreter that has ``llama-cpp-python[server]`` installed.

    Looks at ``configured``, then ``$SELFIMPROVE_LLM_PYTHON``, then ``.venv-llm/bin/python``
    beside the repository and in the current directory.

    Returns:
        The interpreter's path.

    Raises:
        LocalModelError: none was found; the message says how to set one up.
    """
    candidates = (("python", configured), (f"${LLM_PYTHON_ENV}", os.environ.get(LLM_PYTHON_ENV)))
    for label, given in candidates:
        if given:
            path = Path(given).expanduser()
            if path.is_file() and os.access(path, os.X_OK):
                return path
            raise LocalModelError(
                f"{label} is {str(given)!r}, which is not an executable file. Point it at the "
                f"python of an environment with llama-cpp-python[server] (`make llm` creates "
                f"{LLM_VENV}/bin/python), or unset it."
            )
    searched = []
    for root in dict.fromkeys((_REPO_ROOT, Path.cwd())):
        candidate = root / LLM_VENV / "bin" / "python"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        searched.append(str(candidate))
    raise LocalModelError(
        "Expected an interpreter with llama-cpp-python[server] for the local model, found "
        f"none (looked at ${LLM_PYTHON_ENV} and {', '.join(searched)}). Run `make llm` "
        f"(creates {LLM_VENV} and assembles the model; compiling takes several minutes), or "
        f"set ${LLM_PYTHON_ENV} to such an interpreter."
    )


class LlamaServer:
    """A ``python -m llama_cpp.server`` process serving one GGUF model.

    Args:
        options: how to start it (model, alias, context, threads, seed, interpreter).
        host: interface to bind.
        port: port to bind; a free one when omitted.
        stop_grace: seconds to wait after SIGTERM before killing the process.
    """

    def __init__(
        self,
        options: LocalLLMOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        stop_grace: float = 10.0,
    ) -> None:
        self.options = options or LocalLLMOptions()
        self.host = host
        self.port = port or free_port(host)
        self.stop_grace = stop_grace
        self.model_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._command: list[str] = []
        self._log_dir: Path | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, e.g. ``http://127.0.0.1:8080/v1``."""
        return f"{self.url}/v1"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The file the server's output goes to (while it runs)."""
        return None if self._log_dir is None else self._log_dir / "llama_server.log"

    def command(self) -> list[str]:
        """Return the command line that starts the server (resolving interpreter and model).

        Raises:
            LocalModelError: no interpreter or model was found, or the model file is no GGUF
                of the expected size.
        """
        python = find_llm_python(self.options.python)
        model = find_model(self.options.model_path)
        if model.name == QWEN_CODER_05B.filename:
            verify_model(model, checksum=False)  # the sha256 was checked when it was assembled
        else:
            check_gguf(model)
        self.model_path = model
        threads = self.options.n_threads or os.cpu_count() or 1
        return [
            str(python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            self.options.alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.options.n_ctx),
            "--n_threads",
            str(threads),
            "--seed",
            str(self.options.seed),
        ]

    def start(self) -> LlamaServer:
        """Start the server and wait until ``/v1/models`` answers.

        Returns:
            ``self``.

        Raises:
            LocalModelError: already started, no interpreter or model, the process exited,
                or it did not answer within ``startup_timeout_s``; the message includes the
                tail of its log.
        """
        import subprocess
        import tempfile

        if self._process is not None:
            raise LocalModelError("This LlamaServer was already started; create a new one.")
        command = self._command = self.command()
        self._log_dir = Path(tempfile.mkdtemp(prefix="selfimprove-llm-"))
        assert self.log_path is not None
        self._log_handle = open(self.log_path, "wb")  # closed in stop()
        self._process = subprocess.Popen(
            command,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout_s
        while time.monotonic() < deadline:
            process = self._process
            if process is not None and process.poll() is not None:
                tail = self.log_tail()
                hint = ""
                if "No module named 'llama_cpp" in tail:
                    hint = (
                        f" {self._command[0]} has no llama-cpp-python[server]: run `make llm`, "
                        f"or point ${LLM_PYTHON_ENV} at an interpreter that has it."
                    )
                raise LocalModelError(
                    f"The local model server exited with code {process.returncode} before "
                    f"answering.{hint} Log tail:\n{tail}"
                )
            if self.models() is not None:
                return
            time.sleep(0.25)
        raise LocalModelError(
            f"Expected the local model server at {self.url} to answer /v1/models within "
            f"{self.options.startup_timeout_s:.0f} s, it did not. Raise startup_timeout_s on a "
            f"slow machine. Log tail:\n{self.log_tail()}"
        )

    def models(self) -> list[str] | None:
        """Return the model ids ``/v1/models`` lists, or ``None`` when it does not answer."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                if response.status != 200:
                    return None
                body = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
            return None
        return [str(m.get("id")) for m in body.get("data", []) if isinstance(m, dict)]

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log (empty when there is none)."""
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``stop_grace`` seconds. Idempotent."""
        import shutil

        process, self._process = self._process, None
        terminate(process, self.stop_grace)
        handle, self._log_handle = self._log_handle, None
        if handle is not None:
            handle.close()
        log_dir, self._log_dir = self._log_dir, None
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Lease:
    def __init__(self, server: LlamaServer) -> None:
        self.server = server
        self.users = 0


_SHARED: dict[LocalLLMOptions, _Lease] = {}
_LOCK = threading.Lock()


def _key(options: LocalLLMOptions) -> LocalLLMOptions:
    """Options with the model path resolved, so equal setups share a server."""
    return options.model_copy(update={"model_path": str(find_model(options.model_path).resolve())})


def running_server(options: LocalLLMOptions | None = None) -> LlamaServer | None:
    """Return the shared server this process runs for ``options``, if any."""
    try:
        key = _key(options or LocalLLMOptions())
    except LocalModelError:
        return None
    with _LOCK:
        lease = _SHARED.get(key)
        return lease.server if lease is not None and lease.server.running else None


def acquire(options: LocalLLMOptions | None = None) -> LlamaServer:
    """Return the shared server for ``options``, starting it if none runs; pair with release.

    Raises:
        LocalModelError: see :meth:`LlamaServer.start`.
    """
    key = _key(options or LocalLLMOptions())
    with _LOCK:
        lease = _SHARED.get(key)
        if lease is None or not lease.server.running:
            lease = _Lease(LlamaServer(key).start())
            _SHARED[key] = lease
        lease.users += 1
        return lease.server


def release(server: LlamaServer) -> None:
    """Give back a server from :func:`acquire`; the last user's release stops it."""
    with _LOCK:
        for key, lease in list(_SHARED.items()):
            if lease.server is server:
                lease.users -= 1
                if lease.users <= 0:
                    del _SHARED[key]
                    server.stop()
                return


@contextmanager
def shared_server(options: LocalLLMOptions | None = None) -> Iterator[LlamaServer]:
    """Hold the shared server for ``options`` for the duration of a ``with`` block."""
    server = acquire(options)
    try:
        yield server
    finally:
        release(server)


@atexit.register
def _stop_all() -> None:
    with _LOCK:
        leases = list(_SHARED.values())
        _SHARED.clear()
    for lease in leases:
        lease.server.stop()
