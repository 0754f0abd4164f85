"""The simulated chat model: a deterministic, SOP-following stand-in for an OpenAI model.

It is served through the real ``openai`` SDK, in process (:class:`SimulatedTransport`,
:func:`make_sync_client`, :func:`make_async_client`) or over HTTP (``selfimprove-rl
serve-sim``, :func:`running_server`). It is a test bed and a demo engine, never an LLM:
reports name the backend that produced their numbers.

Names load on first use, so importing a submodule (e.g. :mod:`.faults`) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfimprove_rl.simulated.api import SimulatedApi
    from selfimprove_rl.simulated.classify import Verdict, judge
    from selfimprove_rl.simulated.faults import FAULT_KINDS, FaultInjector, FaultKind, FaultPlan
    from selfimprove_rl.simulated.model import Decision, SimulatedChatModel, generic_reply
    from selfimprove_rl.simulated.server import running_server, serve
    from selfimprove_rl.simulated.sop import Sop, Statement, parse_sop
    from selfimprove_rl.simulated.tiers import SIMULATED_MODELS, TierSpec, get_tier
    from selfimprove_rl.simulated.tokens import count_message_tokens, count_tokens
    from selfimprove_rl.simulated.transport import (
        SimulatedTransport,
        make_async_client,
        make_sync_client,
    )

_EXPORTS = {
    "FAULT_KINDS": "faults",
    "FaultInjector": "faults",
    "FaultKind": "faults",
    "FaultPlan": "faults",
    "SIMULATED_MODELS": "tiers",
    "TierSpec": "tiers",
    "get_tier": "tiers",
    "Sop": "sop",
    "Statement": "sop",
    "parse_sop": "sop",
    "count_tokens": "tokens",
    "count_message_tokens": "tokens",
    "Decision": "model",
    "SimulatedChatModel": "model",
    "generic_reply": "model",
    "Verdict": "classify",
    "judge": "classify",
    "SimulatedApi": "api",
    "SimulatedTransport": "transport",
    "make_async_client": "transport",
    "make_sync_client": "transport",
    "running_server": "server",
    "serve": "server",
}

__all__ = [
    "FAULT_KINDS",
    "SIMULATED_MODELS",
    "Decision",
    "FaultInjector",
    "FaultKind",
    "FaultPlan",
    "SimulatedApi",
    "SimulatedChatModel",
    "SimulatedTransport",
    "Sop",
    "Statement",
    "TierSpec",
    "Verdict",
    "count_message_tokens",
    "count_tokens",
    "generic_reply",
    "get_tier",
    "judge",
    "make_async_client",
    "make_sync_client",
    "parse_sop",
    "running_server",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
