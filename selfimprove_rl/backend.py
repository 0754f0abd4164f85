"""Which server answers the chat calls? One :class:`Backend` for every code path.

=====================================  ==================================================
``Backend(...)``                       who answers
=====================================  ==================================================
``kind="simulated"``                   the simulated model, in process (no socket, no key)
``kind="simulated", base_url=URL``     a ``selfimprove-rl serve-sim`` server at URL (no key)
``kind="openai"``                      OpenAI itself; the key must be in ``api_key_env``
``kind="openai", base_url=URL``        any OpenAI-compatible server; without a key in
                                       ``api_key_env`` a placeholder key is sent
``kind="local_llm"``                   the small real local model (llama.cpp server from
                                       ``make llm``), started for a run by
                                       :meth:`Backend.serving`; options in ``local``
=====================================  ==================================================

The API key is read from the environment each time a client is made; it is never stored on
the backend, never part of its repr, and never logged. Clients are made with
``max_retries=0``: the replay owns retries.

Example:
    >>> backend = Backend()
    >>> backend.describe(), backend.deterministic
    ('simulated (in-process)', True)
    >>> Backend(kind="openai", base_url="http://localhost:8000/v1").describe()
    'openai-compatible (localhost:8000)'
    >>> Backend(kind="local_llm").describe()
    'local llama.cpp (qwen2.5-coder-0.5b)'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfimprove_rl.errors import ConfigError
from selfimprove_rl.local_llm.server import LocalLLMOptions
from selfimprove_rl.simulated.faults import FaultPlan

if TYPE_CHECKING:
    import openai

    from selfimprove_rl.simulated.transport import SimulatedTransport

PLACEHOLDER_API_KEY = "sk-no-key-needed"
SIMULATED_REQUEST_RATE = 1000.0
LOCAL_TIMEOUT_S = 600.0


class Backend(BaseModel):
    """Where chat-completion calls go (see the module table)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["simulated", "openai", "local_llm"] = Field(
        default="simulated",
        description="The simulated model, OpenAI / a compatible server, or the local model.",
    )
    base_url: str | None = Field(
        default=None, description="An OpenAI-compatible base URL, e.g. http://127.0.0.1:8765/v1."
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY", description="The environment variable holding the API key."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout in seconds.")
    faults: FaultPlan | None = Field(
        default=None, description="Latency and faults of the in-process simulated model."
    )
    local: LocalLLMOptions | None = Field(
        default=None, description="How the local model server starts (kind='local_llm')."
    )

    @model_validator(mode="before")
    @classmethod
    def _local_timeout(cls, data: Any) -> Any:
        # One request at a time on a few CPU cores: a queued call can wait minutes.
        if isinstance(data, dict) and data.get("kind") == "local_llm" and "timeout_s" not in data:
            return {**data, "timeout_s": LOCAL_TIMEOUT_S}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Backend:
        if self.faults is not None and (self.kind != "simulated" or self.base_url):
            raise ValueError(
                "faults apply to the in-process simulated backend only; for a serve-sim "
                "server pass --latency-ms/--fail-rate to the server instead"
            )
        if self.local is not None and self.kind != "local_llm":
            raise ValueError("local options apply to kind = 'local_llm' only")
        if self.base_url is not None and urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        return self

    @property
    def in_process(self) -> bool:
        """Whether calls are answered in this process by the simulated transport."""
        return self.kind == "simulated" and self.base_url is None

    @property
    def deterministic(self) -> bool:
        """Whether the same request always gets the same answer (the simulated model)."""
        return self.kind == "simulated"

    @property
    def local_options(self) -> LocalLLMOptions:
        """The local model server's options (defaults when ``local`` is not set)."""
        return self.local or LocalLLMOptions()

    def replay_defaults(self) -> dict[str, Any]:
        """``[replay]`` settings this backend needs when a config gives none.

        The local model's server answers one request at a time on a few cores: requests are
        sent one by one and may take as long as the backend's timeout (the replay's default
        30 s would cut queued requests off). Other backends need nothing special.
        """
        if self.kind != "local_llm":
            return {}
        return {"concurrency": 1, "timeout_s": self.timeout_s}

    def describe(self) -> str:
        """A short name of the backend for reports (never the key)."""
        if self.kind == "local_llm":
            return f"local llama.cpp ({self.local_options.alias})"
        if self.in_process:
            return "simulated (in-process)"
        if self.base_url is None:
            return "openai (api.openai.com)"
        label = "simulated" if self.kind == "simulated" else "openai-compatible"
        return f"{label} ({urlsplit(self.base_url).netloc})"

    def api_key(self) -> str:
        """Read the API key from the environment (a placeholder where none is needed).

        Raises:
            ConfigError: the real OpenAI API is the target and the variable is not set.
        """
        if self.kind in ("simulated", "local_llm"):
            return PLACEHOLDER_API_KEY  # a real key is never sent to a local model
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url is None:
            raise ConfigError(
                f"The OpenAI backend needs an API key in the environment variable "
                f"{self.api_key_env}, which is not set. Export it, set api_key_env to the "
                "variable that holds it, or use the simulated backend (kind='simulated')."
            )
        return PLACEHOLDER_API_KEY

    def transport(self) -> SimulatedTransport:
        """A new in-process transport (with this backend's faults).

        Raises:
            ConfigError: the backend is not the in-process simulated model.
        """
        if not self.in_process:
            raise ConfigError(f"Expected the in-process simulated backend, got {self.describe()}.")
        from selfimprove_rl.simulated.transport import SimulatedTransport

        return SimulatedTransport(faults=self.faults)

    @contextmanager
    def serving(self) -> Iterator[Backend]:
        """Hold a running server for this backend and yield a backend that reaches it.

        For ``kind="local_llm"`` without a ``base_url`` this starts the local model server
        (or joins the one this process already runs for the same options) and yields a copy
        with its ``base_url``; the server stops when the last holder leaves. Every other
        backend is yielded as it is.

        Raises:
            selfimprove_rl.errors.LocalModelError: the local model is not set up (``make
                llm``) or its server did not start (the message has the log tail).
        """
        if self.kind != "local_llm" or self.base_url is not None:
            yield self
            return
        from selfimprove_rl.local_llm.server import shared_server

        with shared_server(self.local_options) as server:
            yield self.model_copy(update={"base_url": server.base_url})

    def resolved(self) -> Backend:
        """Return this backend with the ``base_url`` of the local server this process runs.

        Raises:
            ConfigError: a ``local_llm`` backend without ``base_url`` and no server running.
        """
        if self.kind != "local_llm" or self.base_url is not None:
            return self
        from selfimprove_rl.local_llm.server import running_server

        server = running_server(self.local_options)
        if server is None:
            raise ConfigError(
                "Expected a running local model server for the local_llm backend, found none. "
                "Runs start one (`selfimprove-rl run`); in your own code wrap the work in "
                "`with backend.serving() as live:` and use `live`, or start "
                "`selfimprove-rl serve-llm` and set base_url."
            )
        return self.model_copy(update={"base_url": server.base_url})

    def _client_kwargs(self) -> dict[str, Any]:
        from selfimprove_rl.simulated.transport import IN_PROCESS_BASE_URL

        if self.kind == "local_llm" and self.base_url is None:
            return self.resolved()._client_kwargs()
        return {
            "api_key": self.api_key(),
            "base_url": IN_PROCESS_BASE_URL if self.in_process else self.base_url,
            "timeout": self.timeout_s,
            "max_retries": 0,
        }

    def async_client(self, transport: SimulatedTransport | None = None) -> openai.AsyncOpenAI:
        """A new ``openai.AsyncOpenAI`` client for this backend.

        Args:
            transport: for the in-process backend, the transport to share (e.g. to share
                one fault stream between clients); default: a new one.
        """
        import httpx
        import openai

        kwargs = self._client_kwargs()
        if self.in_process:
            kwargs["http_client"] = httpx.AsyncClient(
                transport=transport or self.transport(), timeout=self.timeout_s
            )
        return openai.AsyncOpenAI(**kwargs)

    def sync_client(self, transport: SimulatedTransport | None = None) -> openai.OpenAI:
        """A new ``openai.OpenAI`` client for this backend (see :meth:`async_client`)."""
        import httpx
        import openai

        kwargs = self._client_kwargs()
        if self.in_process:
            kwargs["http_client"] = httpx.Client(
                transport=transport or self.transport(), timeout=self.timeout_s
            )
        return openai.OpenAI(**kwargs)

    def phoenix_llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``phoenix.evals.LLM(provider="openai", model=..., **kwargs)``.

        In process, Phoenix gets httpx clients on one shared simulated transport through
        ``sync_client_kwargs``/``async_client_kwargs`` (it rejects a plain ``http_client``).
        For simulated backends Phoenix's client-side rate limiter starts at
        :data:`SIMULATED_REQUEST_RATE` requests per second instead of its default of a few,
        which would otherwise dominate the run time (200 rows: ~31 s instead of ~0.7 s).
        """
        if self.kind == "local_llm" and self.base_url is None:
            return self.resolved().phoenix_llm_kwargs()
        kwargs: dict[str, Any] = {
            "api_key": self.api_key(),
            "timeout": self.timeout_s,
        }
        if self.kind == "simulated":
            kwargs["initial_per_second_request_rate"] = SIMULATED_REQUEST_RATE
        if self.base_url is not None:
            kwargs["base_url"] = self.base_url
        if self.in_process:
            import httpx

            from selfimprove_rl.simulated.transport import IN_PROCESS_BASE_URL

            transport = self.transport()
            kwargs["base_url"] = IN_PROCESS_BASE_URL
            kwargs["sync_client_kwargs"] = {
                "http_client": httpx.Client(transport=transport, timeout=self.timeout_s)
            }
            kwargs["async_client_kwargs"] = {
                "http_client": httpx.AsyncClient(transport=transport, timeout=self.timeout_s)
            }
        return kwargs
