"""Which server answers? The simulated model (``serve-sim``) or the local real model (llama.cpp).

Both are OpenAI-compatible HTTP servers started as processes for the length of a benchmark;
the counting proxy sits in front of them. The llama.cpp server is started by the package's
own process manager (``selfimprove_rl.local_llm``), or an already running one is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from selfimprove_rl.errors import ConfigError
from selfimprove_rl.local_llm import DEFAULT_ALIAS

TargetName = Literal["sim", "local"]


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


@contextlib.contextmanager
def serve_target(
    name: TargetName,
    *,
    sim_model: str = "sim-large",
    gguf: str | None = None,
    alias: str = DEFAULT_ALIAS,
    llm_python: str | None = None,
    base_url: str | None = None,
) -> Iterator[Target]:
    """Start the named target's server and yield how to call it (stopped on exit).

    ``base_url`` points the local target at a server that is already running (e.g.
    ``selfimprove-rl serve-llm``); then nothing is started or stopped here.

    Raises:
        ConfigError: unknown target, or its server cannot start.
    """
    if name == "sim":
        from selfimprove_rl.simulated.server import running_server

        with running_server() as url:
            yield Target("sim", url, sim_model, None, concurrency=8, timeout_s=60.0)
        return
    if name == "local":
        if base_url is not None:
            yield Target("local", base_url, alias, alias, concurrency=1, timeout_s=900.0)
            return
        from selfimprove_rl.local_llm import LocalLLMOptions, shared_server

        options = LocalLLMOptions(model_path=gguf, alias=alias, python=llm_python)
        with shared_server(options) as server:
            yield Target("local", server.base_url, alias, alias, concurrency=1, timeout_s=900.0)
        return
    raise ConfigError(f"Expects the target 'sim' or 'local', got {name!r}.")
