"""How does synchronous code (a Gymnasium ``step``, a CLI) run the async replay?

:class:`BackgroundLoop` owns one event loop on a daemon thread. Coroutines submitted to it
run there, so async clients (``openai.AsyncOpenAI``, ``httpx.AsyncClient``) always see the
same loop, and the caller may itself be inside a running loop (a notebook) without
"event loop is already running" errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    """An event loop running on its own thread; :meth:`run` blocks until a coroutine ends.

    Example:
        >>> import asyncio
        >>> loop = BackgroundLoop()
        >>> loop.run(asyncio.sleep(0, result=42))
        42
        >>> loop.close()
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="selfimprove-rl-loop", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop coroutines run on."""
        return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the background loop and return its result (or raise its error).

        Raises:
            RuntimeError: the loop was closed.
        """
        if self._closed:
            coroutine.close()
            raise RuntimeError("BackgroundLoop is closed; create a new one.")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close_client(self, client: Any) -> None:
        """Close an async client (``openai.AsyncOpenAI``) on this loop, quietly.

        Its connections were opened here; left to the garbage collector, the client would
        schedule its close on whatever loop runs then and fail loudly ("Event loop is
        closed"). A client without ``close`` or one that fails to close is left as it is.
        """
        close = getattr(client, "close", None)
        if close is not None and not self._closed:
            with contextlib.suppress(Exception):
                self.run(close())

    def close(self) -> None:
        """Stop the loop and join its thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
