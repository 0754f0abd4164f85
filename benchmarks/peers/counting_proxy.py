"""Count every model call a peer makes: an HTTP proxy in front of an OpenAI-compatible server.

GEPA and DSPy talk to the target model through their own clients (a callable we hand GEPA,
LiteLLM inside DSPy), so their own counters are not comparable with ours. Every client in the
peers benchmark is instead pointed at this proxy, which forwards each request unchanged to the
real server (llama.cpp's ``llama_cpp.server`` or ``selfimprove-rl serve-sim``) and counts it.

The first path segment names the *role* of the caller, so one upstream model can be counted
separately as the target and as a reflection / prompt model::

    proxy = CountingProxy("http://127.0.0.1:8765/v1").start()
    proxy.base_url("target")      # http://127.0.0.1:PORT/target/v1 -> upstream /v1
    proxy.base_url("reflection")  # same upstream, counted apart

A *call* is a POST to ``.../chat/completions`` or ``.../completions``; it is counted per
(role, model) whatever the outcome (an upstream error counts as a call and as an error).
Other requests (``GET /v1/models``) are forwarded and counted as ``other_requests``.

With a :class:`~selfimprove_rl.cache.ResponseCache`, a call that is deterministic
(``temperature`` 0, one choice, no streaming) and was answered before is served from the
cache: it still counts as a call of its caller (the optimizer asked for it) and is reported
as ``cached`` rather than ``forwarded``, so a re-run costs no model time but reports the same
numbers. Sampled calls (temperature above 0 or unset) are always forwarded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import defaultdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict

from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.errors import ConfigError
from selfimprove_rl.replay import canonical_json

ROLE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_CALL_SUFFIXES = ("/chat/completions", "/completions")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "host",
    }
)


class CallTally(BaseModel):
    """Calls of one (role, model): how many, how answered, and the tokens the answers report."""

    model_config = ConfigDict(frozen=True)

    role: str
    model: str
    calls: int = 0
    forwarded: int = 0
    cached: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


class ProxyCounts(BaseModel):
    """A snapshot of everything the proxy counted (see :meth:`CountingProxy.counts`)."""

    model_config = ConfigDict(frozen=True)

    tallies: tuple[CallTally, ...] = ()
    other_requests: int = 0

    def calls(self, role: str | None = None, *, field: str = "calls") -> int:
        """Sum ``field`` (``calls``, ``forwarded``, ``cached``, ``errors``...) over a role."""
        return sum(
            int(getattr(tally, field)) for tally in self.tallies if role in (None, tally.role)
        )

    def roles(self) -> dict[str, int]:
        """Calls per role."""
        out: dict[str, int] = defaultdict(int)
        for tally in self.tallies:
            out[tally.role] += tally.calls
        return dict(out)

    def __sub__(self, before: ProxyCounts) -> ProxyCounts:
        """What was counted between ``before`` and this snapshot."""
        earlier = {(t.role, t.model): t for t in before.tallies}
        fields = ("calls", "forwarded", "cached", "errors", "prompt_tokens", "completion_tokens")
        tallies = []
        for tally in self.tallies:
            old = earlier.get((tally.role, tally.model))
            if old is None:
                tallies.append(tally)
                continue
            update: dict[str, Any] = {f: getattr(tally, f) - getattr(old, f) for f in fields}
            update["seconds"] = tally.seconds - old.seconds
            if update["calls"] or update["errors"]:
                tallies.append(tally.model_copy(update=update))
        return ProxyCounts(
            tallies=tuple(tallies), other_requests=self.other_requests - before.other_requests
        )


def _cacheable(body: Any) -> bool:
    """Whether a request's answer is fixed by its content (greedy, one choice, not streamed)."""
    if not isinstance(body, dict) or body.get("stream"):
        return False
    temperature = body.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return False
    return temperature == 0 and body.get("n", 1) in (1, None)


class CountingProxy:
    """A threaded HTTP proxy on 127.0.0.1 that counts chat-completion calls per role and model.

    Args:
        upstream: the real server's OpenAI base URL, e.g. ``http://127.0.0.1:8080/v1``.
        cache: serve repeated deterministic calls from here (and store new answers); ``None``
            forwards every call.
        host: interface to listen on (loopback only by default).
        port: port to listen on; ``0`` picks a free one.
        timeout_s: how long one upstream request may take.

    Raises:
        ConfigError: ``upstream`` is not an http(s) URL.
    """

    def __init__(
        self,
        upstream: str,
        *,
        cache: ResponseCache | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_s: float = 600.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"Expects the upstream as an http(s) base URL such as http://127.0.0.1:8080/v1, "
                f"got {upstream!r}."
            )
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self.upstream_path = parts.path.rstrip("/")
        self.cache = cache
        self.host = host
        self._port = port
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, str], dict[str, float]] = {}
        self._other = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._server is None:
            raise RuntimeError("The proxy is not running; call start() first.")
        return int(self._server.server_address[1])

    def base_url(self, role: str) -> str:
        """The OpenAI base URL a client of ``role`` should use (``http://host:port/role/v1``).

        Raises:
            ConfigError: ``role`` is not a lowercase name such as ``target`` or ``reflection``.
        """
        if not ROLE_PATTERN.match(role):
            raise ConfigError(
                f"Expects a role such as 'target' or 'reflection' (lowercase letters, digits, "
                f"'-' and '_'), got {role!r}."
            )
        return f"http://{self.host}:{self.port}/{role}{self.upstream_path}"

    def start(self) -> CountingProxy:
        """Listen and serve on a background thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("The proxy is already running.")
        self._client = httpx.Client(timeout=self.timeout_s)
        handler = type("_BoundHandler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer((self.host, self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="counting-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close the upstream connections (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ counts
    def counts(self) -> ProxyCounts:
        """A snapshot of the counts so far (subtract two snapshots for what happened between)."""
        with self._lock:
            tallies = tuple(
                CallTally(
                    role=role,
                    model=model,
                    **{k: (v if k == "seconds" else int(v)) for k, v in values.items()},
                )
                for (role, model), values in sorted(self._tallies.items())
            )
            return ProxyCounts(tallies=tallies, other_requests=self._other)

    def _record(self, role: str, model: str, **amounts: float) -> None:
        with self._lock:
            tally = self._tallies.setdefault(
                (role, model),
                {
                    "calls": 0,
                    "forwarded": 0,
                    "cached": 0,
                    "errors": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "seconds": 0.0,
                },
            )
            for key, amount in amounts.items():
                tally[key] += amount

    def _count_other(self) -> None:
        with self._lock:
            self._other += 1

    # ------------------------------------------------------------------ forwarding
    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer one request: split off the role, forward (or serve from the cache), count.

        Returns:
            Status, response headers and body to send back to the client.
        """
        role, _, rest = path.lstrip("/").partition("/")
        if not ROLE_PATTERN.match(role) or not rest:
            return _error(
                HTTPStatus.NOT_FOUND,
                f"Expects a path /<role>{self.upstream_path}/..., got {path!r}: point the client "
                "at CountingProxy.base_url(role).",
            )
        upstream_path = "/" + rest
        is_call = method == "POST" and upstream_path.split("?")[0].endswith(_CALL_SUFFIXES)
        if not is_call:
            self._count_other()
            return self._forward(method, upstream_path, headers, body)[:3]
        try:
            payload: Any = json.loads(body or b"null")
        except ValueError:
            payload = None
        model = str(payload.get("model", "?")) if isinstance(payload, dict) else "?"
        key = None
        if self.cache is not None and _cacheable(payload):
            text = canonical_json({"path": upstream_path.split("?")[0], "body": payload})
            key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            stored = self.cache.get(key)
            if stored is not None:
                self._record(role, model, calls=1, cached=1, **_usage(stored))
                data = json.dumps(stored, ensure_ascii=False).encode("utf-8")
                return 200, {"content-type": "application/json"}, data
        started = time.perf_counter()
        status, out_headers, data, answer = self._forward(method, upstream_path, headers, body)
        elapsed = time.perf_counter() - started
        failed = status >= 400 or not isinstance(answer, dict)
        self._record(
            role,
            model,
            calls=1,
            forwarded=1,
            errors=1 if failed else 0,
            seconds=elapsed,
            **(_usage(answer) if isinstance(answer, dict) else {}),
        )
        if key is not None and not failed and isinstance(answer, dict) and answer.get("choices"):
            assert self.cache is not None
            self.cache.put(key, answer)
        return status, out_headers, data

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes, Any]:
        assert self._client is not None
        sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            response = self._client.request(
                method, self.upstream_origin + path, headers=sent, content=body
            )
        except httpx.HTTPError as exc:
            status, out, data = _error(
                HTTPStatus.BAD_GATEWAY,
                f"The counting proxy could not reach {self.upstream_origin}: "
                f"{type(exc).__name__}: {exc}",
            )
            return status, out, data, None
        data = response.content
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            answer = response.json()
        except ValueError:
            answer = None
        return response.status_code, out_headers, data, answer


def _usage(answer: dict[str, Any]) -> dict[str, float]:
    usage = answer.get("usage") or {}
    if not isinstance(usage, dict):
        return {}
    return {
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
    }


def _error(status: HTTPStatus, message: str) -> tuple[int, dict[str, str], bytes]:
    body = {"error": {"message": message, "type": "proxy_error", "code": int(status)}}
    return int(status), {"content-type": "application/json"}, json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the bound :class:`CountingProxy` (set as ``proxy``)."""

    proxy: CountingProxy
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, data = self.proxy.handle(
            self.command, self.path, dict(self.headers.items()), body
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the counts are the record."""
