"""How is the simulated model served over HTTP? A local OpenAI-compatible server.

``selfimprove-rl serve-sim --port 8765`` runs :func:`serve`: a Starlette app on uvicorn that
answers exactly what the in-process transport answers (:mod:`.api`), with latency and faults
from a :class:`~selfimprove_rl.simulated.faults.FaultPlan`. Once it listens it prints one
line, flushed, that scripts can read (with ``--port 0``, the port the OS picked)::

    serve-sim listening on http://127.0.0.1:8765/v1

A ``timeout`` fault holds the request for ``timeout_hold_s`` and then answers 504. The model
runs on the event loop: the first semantic rule loads the embedder (a few seconds), during
which other requests wait. SIGTERM and Ctrl-C stop the server within about a second.

:func:`running_server` starts the command in a subprocess for tests and benchmarks and yields
its base URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from selfimprove_rl.errors import SimulatedModelError
from selfimprove_rl.simulated.api import SimulatedApi
from selfimprove_rl.simulated.faults import FAULT_KINDS, FaultKind, FaultPlan, error_body

if TYPE_CHECKING:
    from starlette.applications import Starlette

READY_LINE = re.compile(r"^serve-sim listening on (?P<url>http://\S+/v1)\s*$")
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def create_app(api: SimulatedApi) -> Starlette:
    """Return the Starlette app serving ``api`` on every path."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        if api.latency_s:
            await asyncio.sleep(api.latency_s)
        outcome = api.answer(request.method, request.url.path, body)
        if outcome.response is None:
            await asyncio.sleep(api.faults.timeout_hold_s if api.faults else 0.0)
            held = error_body(
                "Gateway timeout (injected fault of the simulated model).",
                "server_error",
                "timeout",
            )
            return Response(held, status_code=504, media_type="application/json")
        answer = outcome.response
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=_METHODS)])


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    latency_ms: float = 0.0,
    fail_rate: float = 0.0,
    seed: int = 0,
    *,
    kinds: Sequence[FaultKind] = FAULT_KINDS,
    timeout_hold_s: float = 30.0,
    reject_response_format: bool = False,
) -> None:
    """Serve the simulated model over HTTP until interrupted (blocks).

    Args:
        host: the interface to bind.
        port: the port to bind; 0 picks a free one (printed in the ready line).
        latency_ms: latency added to every request.
        fail_rate: share of chat requests answered with a fault.
        seed: seed of the fault stream.
        kinds: the fault kinds to draw from.
        timeout_hold_s: how long a ``timeout`` fault holds its request.
        reject_response_format: answer requests carrying ``response_format`` with HTTP 400.
    """
    import uvicorn

    plan = FaultPlan(
        latency_ms=latency_ms,
        fail_rate=fail_rate,
        seed=seed,
        kinds=tuple(kinds),
        timeout_hold_s=timeout_hold_s,
        reject_response_format=reject_response_format,
    )
    app = create_app(SimulatedApi(faults=plan))

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()[1]
                print(f"serve-sim listening on {_url(host, bound)}", flush=True)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    _Server(config).run()


def _serve_sim_argv(
    latency_ms: float,
    fail_rate: float,
    seed: int,
    kinds: Sequence[FaultKind],
    timeout_hold_s: float,
    reject_response_format: bool,
) -> list[str]:
    argv = [sys.executable, "-m", "selfimprove_rl.cli", "serve-sim", "--port", "0"]
    argv += ["--latency-ms", str(latency_ms), "--fail-rate", str(fail_rate), "--seed", str(seed)]
    argv += ["--fault-kinds", ",".join(kinds), "--timeout-hold-s", str(timeout_hold_s)]
    if reject_response_format:
        argv.append("--reject-response-format")
    return argv


@contextlib.contextmanager
def running_server(
    *,
    latency_ms: float = 0.0,
    fail_rate: float = 0.0,
    seed: int = 0,
    kinds: Sequence[FaultKind] = FAULT_KINDS,
    timeout_hold_s: float = 30.0,
    reject_response_format: bool = False,
    startup_timeout_s: float = 60.0,
) -> Iterator[str]:
    """Run ``selfimprove-rl serve-sim`` on a free local port in a subprocess.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:40123/v1``; the server stops on exit.

    Raises:
        SimulatedModelError: the server did not report ready within ``startup_timeout_s``
            (the message carries the end of its stderr).
    """
    argv = _serve_sim_argv(
        latency_ms, fail_rate, seed, kinds, timeout_hold_s, reject_response_format
    )
    with tempfile.TemporaryFile() as stderr:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=env
        )
        try:
            yield _wait_ready(process, stderr, startup_timeout_s)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _wait_ready(process: subprocess.Popen[bytes], stderr: Any, timeout_s: float) -> str:
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            break
        match = READY_LINE.match(line.decode(errors="replace"))
        if match:
            return match["url"]
    stderr.seek(0)
    tail = stderr.read().decode(errors="replace")[-2000:]
    raise SimulatedModelError(
        f"serve-sim did not report ready within {timeout_s:.0f} s "
        f"(exit code {process.poll()}). Its stderr ends with:\n{tail}"
    )
