"""Session fixtures: one real Phoenix server for the whole test session, and quiet threads.

The server starts on first use (only sessions that run ``@pytest.mark.phoenix`` tests pay its
~10 s start), on free HTTP and gRPC ports bound to 127.0.0.1, with its own temporary working
directory and sqlite file and product telemetry off; it is stopped when the session ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

# Client side: never read a developer's .env.phoenix or PHOENIX_* settings.
os.environ["PHOENIX_DISCOVER_CONFIG"] = "false"

if TYPE_CHECKING:
    from selfimprove_rl.backend import Backend
    from selfimprove_rl.telemetry.server import PhoenixServer


@pytest.fixture(scope="session")
def phoenix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoenixServer]:
    """A running Phoenix server (``.url``, ``.traces_endpoint``) shared by the session."""
    from selfimprove_rl.telemetry.server import PhoenixServer

    working_dir = tmp_path_factory.mktemp("phoenix")
    server = PhoenixServer(
        working_dir,
        host="127.0.0.1",
        startup_timeout=120,
        extra_env={"PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_DISCOVER_CONFIG": "false"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _embedding_store(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A session's own embedding store: tests never read or fill a developer's cache."""
    os.environ["SELFIMPROVE_EMBEDDING_CACHE"] = str(tmp_path_factory.mktemp("embeddings"))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    """Small nets are much faster on one thread on 2 cores; only when torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def local_llm() -> Iterator[Backend]:
    """A ``local_llm`` backend whose real server runs for the session (tests marked ``llm``).

    Skips with the reason when the local model is not set up (``make llm``).
    """
    import subprocess

    from selfimprove_rl.backend import Backend
    from selfimprove_rl.errors import LocalModelError
    from selfimprove_rl.local_llm import find_llm_python, find_model

    try:
        python = find_llm_python()
        find_model()
    except LocalModelError as exc:
        pytest.skip(f"the local model is not set up: {exc}")
    probe = subprocess.run(
        [str(python), "-c", "import llama_cpp.server"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import llama_cpp.server yet; run `make llm`.")
    with Backend(kind="local_llm").serving() as backend:
        yield backend
