"""How does a team that has no tracing yet send its OpenAI calls to Phoenix? One optional call.

:func:`setup_tracing` registers a Phoenix tracer provider (``phoenix.otel``, OTLP over HTTP)
for a project and instruments the ``openai`` SDK with the OpenInference instrumentor.
It is a convenience only: a team that already configures OpenTelemetry keeps its own set-up,
and everything else in this package (the eval instrumentor, the source) works with any
tracer provider that exports to Phoenix.

Example:
    >>> from selfimprove_rl.telemetry import setup_tracing, teardown_tracing
    >>> provider = setup_tracing("http://127.0.0.1:6006", "support-bot")  # doctest: +SKIP
    >>> # openai calls made here are traced to the project "support-bot"
    >>> teardown_tracing(provider)  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from selfimprove_rl.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACES_PATH = "/v1/traces"

_lock = threading.Lock()
_openai_owner: TracerProvider | None = None
_base_urls: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """Return ``(base_url, traces_endpoint)`` for a Phoenix URL given either way.

    A bare endpoint would make ``phoenix.otel`` pick gRPC on port 4317 silently, so the OTLP
    HTTP path is always spelled out.

    Example:
        >>> split_endpoint("http://127.0.0.1:6006")
        ('http://127.0.0.1:6006', 'http://127.0.0.1:6006/v1/traces')
        >>> split_endpoint("http://127.0.0.1:6006/v1/traces")
        ('http://127.0.0.1:6006', 'http://127.0.0.1:6006/v1/traces')

    Raises:
        ConfigError: not an http(s) URL.
    """
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"Expects a Phoenix URL like 'http://127.0.0.1:6006', got {endpoint!r}.")
    path = parts.path.rstrip("/")
    if path.endswith(TRACES_PATH):
        path = path[: -len(TRACES_PATH)]
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return base, base + TRACES_PATH


def base_url_of(tracer_provider: object) -> str | None:
    """The Phoenix base URL a provider made by :func:`setup_tracing` exports to, else None."""
    try:
        return _base_urls.get(tracer_provider)
    except TypeError:
        return None


def setup_tracing(
    endpoint: str,
    project_name: str,
    *,
    batch: bool = True,
    set_global_tracer_provider: bool = False,
    instrument_openai: bool = True,
    headers: Mapping[str, str] | None = None,
) -> TracerProvider:
    """Register a Phoenix tracer provider for a project and trace the ``openai`` SDK.

    Optional: use it when your application has no OpenTelemetry set-up of its own. The
    provider exports over OTLP/HTTP to ``<endpoint>/v1/traces`` (never gRPC). Call
    :func:`teardown_tracing` to flush, uninstrument and shut down.

    Args:
        endpoint: the Phoenix base URL (``http://host:6006``) or its ``/v1/traces`` URL.
        project_name: the Phoenix project the spans go to.
        batch: export in a background batch (production); ``False`` exports each span as it
            ends (tests, short scripts).
        set_global_tracer_provider: also make it the global OpenTelemetry provider.
        instrument_openai: instrument the ``openai`` SDK (sync and async clients) with it.
        headers: extra OTLP headers (e.g. authorization for a hosted Phoenix).

    Returns:
        The tracer provider (``opentelemetry.sdk.trace.TracerProvider``).

    Raises:
        ConfigError: a bad endpoint, or the ``openai`` SDK is already instrumented by
            another provider set up here.
    """
    from openinference.instrumentation.openai import OpenAIInstrumentor
    from phoenix.otel import register

    global _openai_owner
    base, traces = split_endpoint(endpoint)
    if not project_name:
        raise ConfigError("Expects a non-empty Phoenix project name, got ''.")
    with _lock:
        if instrument_openai and _openai_owner is not None:
            raise ConfigError(
                "The openai SDK is already instrumented by an earlier setup_tracing() call. "
                "Call teardown_tracing() on that provider first, or pass instrument_openai=False."
            )
        provider = register(
            endpoint=traces,
            project_name=project_name,
            batch=batch,
            set_global_tracer_provider=set_global_tracer_provider,
            protocol="http/protobuf",
            headers=dict(headers) if headers else None,
            verbose=False,
        )
        _base_urls[provider] = base
        if instrument_openai:
            OpenAIInstrumentor().instrument(tracer_provider=provider)
            _openai_owner = provider
    return provider


def teardown_tracing(tracer_provider: TracerProvider) -> None:
    """Flush and shut down a provider from :func:`setup_tracing`; uninstrument ``openai``.

    Idempotent; safe to call on a provider that did not instrument ``openai``.
    """
    from openinference.instrumentation.openai import OpenAIInstrumentor

    global _openai_owner
    with _lock:
        if _openai_owner is tracer_provider:
            OpenAIInstrumentor().uninstrument()
            _openai_owner = None
    tracer_provider.force_flush()
    tracer_provider.shutdown()
