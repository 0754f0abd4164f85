"""How is a local Phoenix server run? Start ``phoenix serve`` as a process, wait, stop it.

Phoenix is a component started like a database: its own process, working directory, sqlite
file and free ports. The server package lives in its own virtualenv (``.venv-phoenix``) so that
``import phoenix.*`` in ours stays fast; :func:`find_phoenix_executable` locates it.

Example:
    >>> from selfimprove_rl.telemetry.server import PhoenixServer
    >>> with PhoenixServer() as server:  # doctest: +SKIP
    ...     print(server.url)
    http://127.0.0.1:54321
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from selfimprove_rl.errors import TelemetryError
from selfimprove_rl.processes import free_port, log_tail, terminate

PHOENIX_BIN_ENV = "SELFIMPROVE_PHOENIX_BIN"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def find_phoenix_executable() -> Path:
    """Locate the ``phoenix`` command of the Phoenix server package.

    Looks at ``$SELFIMPROVE_PHOENIX_BIN``, then ``.venv-phoenix/bin/phoenix`` beside the
    repository (and in the current directory), then ``phoenix`` on ``PATH``.

    Returns:
        The path of the executable.

    Raises:
        TelemetryError: no executable was found; the message says how to install one.
    """
    configured = os.environ.get(PHOENIX_BIN_ENV)
    if configured:
        path = Path(configured)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise TelemetryError(
            f"${PHOENIX_BIN_ENV} is {configured!r}, which is not an executable file. "
            "Point it at the `phoenix` command of an environment with arize-phoenix installed "
            "(`make install` creates .venv-phoenix/bin/phoenix), or unset it."
        )
    for root in (_REPO_ROOT, Path.cwd()):
        candidate = root / ".venv-phoenix" / "bin" / "phoenix"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("phoenix")
    if on_path:
        return Path(on_path)
    raise TelemetryError(
        "Expected a Phoenix server executable, found none: not in "
        f"${PHOENIX_BIN_ENV}, not at {_REPO_ROOT / '.venv-phoenix/bin/phoenix'}, not on PATH. "
        "Run `make install` (creates .venv-phoenix with arize-phoenix), or "
        f"`pip install arize-phoenix` in another environment and set ${PHOENIX_BIN_ENV}."
    )


class PhoenixServer:
    """A ``phoenix serve`` process with its own working directory, sqlite file and free ports.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The server is bound to
    ``host`` for HTTP and gRPC (gRPC otherwise binds every interface), and its product
    telemetry is off.

    Args:
        working_dir: folder for the database and logs; a temporary folder (removed on stop)
            when omitted.
        host: interface to bind.
        port: HTTP port; a free one when omitted.
        grpc_port: OTLP gRPC port; a free one when omitted.
        executable: the ``phoenix`` command; found by :func:`find_phoenix_executable` when
            omitted.
        startup_timeout: seconds to wait for ``/healthz``.
        stop_grace: seconds to wait after SIGTERM before killing the process.
        extra_env: additional environment variables for the server.
    """

    def __init__(
        self,
        working_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        grpc_port: int | None = None,
        executable: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        stop_grace: float = 10.0,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._executable = Path(executable) if executable else None
        self._owns_dir = working_dir is None
        self._working_dir = Path(working_dir) if working_dir is not None else None
        self._extra_env = dict(extra_env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API and UI, e.g. ``http://127.0.0.1:6006``."""
        return f"http://{self.host}:{self.port}"

    @property
    def traces_endpoint(self) -> str:
        """The OTLP/HTTP traces endpoint, for ``phoenix.otel.register(endpoint=...)``."""
        return f"{self.url}/v1/traces"

    @property
    def working_dir(self) -> Path:
        """The server's working directory (exists once started)."""
        if self._working_dir is None:
            raise TelemetryError("The Phoenix server has no working directory yet; call start().")
        return self._working_dir

    @property
    def log_path(self) -> Path:
        """The file the server's stdout and stderr go to."""
        return self.working_dir / "phoenix.log"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def environment(self) -> dict[str, str]:
        """The environment the server process runs with."""
        db_path = self.working_dir / "phoenix.db"
        env = dict(os.environ)
        env.update(
            {
                "PHOENIX_WORKING_DIR": str(self.working_dir),
                "PHOENIX_HOST": self.host,
                "PHOENIX_PORT": str(self.port),
                "PHOENIX_GRPC_PORT": str(self.grpc_port),
                "PHOENIX_SQL_DATABASE_URL": f"sqlite:///{db_path}",
                "PHOENIX_TELEMETRY_ENABLED": "false",
            }
        )
        env.update(self._extra_env)
        return env

    def start(self) -> PhoenixServer:
        """Start the server and wait until ``/healthz`` answers.

        Returns:
            ``self``.

        Raises:
            TelemetryError: already started, the process exited, or it did not become healthy
                within ``startup_timeout``; the message includes the tail of its log.
        """
        if self._process is not None:
            raise TelemetryError("This PhoenixServer was already started; create a new one.")
        executable = self._executable or find_phoenix_executable()
        if self._working_dir is None:
            self._working_dir = Path(tempfile.mkdtemp(prefix="selfimprove-phoenix-"))
        self._working_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # closed in stop()
        self._log_handle = log
        self._process = subprocess.Popen(
            [str(executable), "serve"],
            cwd=self._working_dir,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise TelemetryError(
                    f"The Phoenix server exited with code {self._process.returncode} before "
                    f"becoming healthy. Log tail ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise TelemetryError(
            f"Expected the Phoenix server at {self.url} to answer /healthz within "
            f"{self.startup_timeout:.0f} s, it did not. Raise startup_timeout on a slow "
            f"machine, or read its log ({self.log_path}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log (empty when there is none)."""
        return log_tail(self.log_path if self._working_dir is not None else None, lines)

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``stop_grace`` seconds. Idempotent."""
        process, self._process = self._process, None
        terminate(process, self.stop_grace)
        handle, self._log_handle = self._log_handle, None
        if handle is not None:
            handle.close()
        if self._owns_dir and self._working_dir is not None and process is not None:
            shutil.rmtree(self._working_dir, ignore_errors=True)

    def __enter__(self) -> PhoenixServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
