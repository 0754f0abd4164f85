"""How is a server process we started stopped, and what did it last say?

Shared by the Phoenix and the local-model process managers.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path


def terminate(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    """Stop ``process`` if it runs: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def log_tail(path: Path | None, lines: int) -> str:
    """The last ``lines`` lines of the log at ``path`` (empty when there is none)."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
