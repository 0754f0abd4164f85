"""A local OpenAI-compatible server that answers chat completions from a script, in order.

Tests drive the LLM coach through the real ``openai`` SDK against it: each request gets the
next scripted reply (message content, ``None`` for an empty reply, or an :class:`HTTPError`
to answer with an error status), and every request body is recorded. Response formats listed
in ``reject_formats`` are refused without consuming a reply, like a server that does not
support structured output: with HTTP 400 naming ``response_format`` (OpenAI, vLLM), or with
``reject_status=500`` and the validation-error body llama.cpp's server sends for json_schema.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass(frozen=True)
class HTTPError:
    """A scripted error response."""

    status: int
    message: str = "scripted error"


Reply = str | None | HTTPError


class ScriptedServer:
    """Serve ``replies`` in order at ``base_url`` (``/v1/chat/completions``).

    Args:
        replies: what each successive request gets.
        reject_formats: ``response_format`` types the server refuses.
        reject_status: the status of a refusal: 400 (an OpenAI-style message) or 500 (the
            body llama.cpp's server answers json_schema with).
    """

    def __init__(
        self,
        replies: Iterable[Reply],
        *,
        reject_formats: Iterable[str] = (),
        reject_status: int = 400,
    ) -> None:
        self.replies = list(replies)
        self.reject_formats = set(reject_formats)
        self.reject_status = reject_status
        self.requests: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("The scripted server did not start within 10 s.")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def add(self, *replies: Reply) -> None:
        """Append replies to the script."""
        with self._lock:
            self.replies.extend(replies)

    async def _chat(self, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        response_format = (body.get("response_format") or {}).get("type")
        with self._lock:
            if response_format in self.reject_formats:
                self.rejected.append(body)
                if self.reject_status == 500:
                    return _llama_cpp_validation_error(response_format)
                return _error(
                    self.reject_status, f"response_format {response_format} is not supported"
                )
            self.requests.append(body)
            if not self.replies:
                return _error(500, "the script has no more replies")
            reply = self.replies.pop(0)
        if isinstance(reply, HTTPError):
            return _error(reply.status, reply.message)
        return JSONResponse(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": None}},
        status_code=status,
    )


def _llama_cpp_validation_error(response_format: str) -> JSONResponse:
    """The 500 llama-cpp-python's server (0.3.36) answers an unsupported response_format with.

    Recorded from the real server (``.venv-llm``); the traceback lines it appends are left out.
    """
    detail = (
        "{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': '"
        + response_format
        + "', 'ctx': {'expected': \"'text' or 'json_object'\"}}"
    )
    return JSONResponse(
        {
            "error": {
                "message": f"1 validation error:\n  {detail}\n",
                "type": "internal_server_error",
                "param": None,
                "code": None,
            }
        },
        status_code=500,
    )
