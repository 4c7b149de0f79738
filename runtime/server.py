"""A small OpenAI-compatible HTTP server over the local engine.

It speaks the subset of the chat-completions API that clients use —
``POST /v1/chat/completions`` (plain or ``stream: true`` server-sent events, with
``stream_options.include_usage``), ``GET /v1/models`` and ``GET /health`` — so
``OpenAIBackend`` is tested against a real server, and any OpenAI client can use
the engine. Standard library only: ``ThreadingHTTPServer`` gives each connection
a thread, and the engine batches the concurrent requests.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ctxproto.errors import BackendError, ConfigError, CtxprotoError
from ctxproto.runtime.engine import Engine
from ctxproto.runtime.params import Completion, GenerationParams

__all__ = ["OpenAIServer"]

MAX_BODY_BYTES = 16 << 20


class OpenAIServer:
    """Serves ``engine`` on ``host:port`` (port 0 picks a free one) from a daemon thread."""

    def __init__(
        self, engine: Engine, *, host: str = "127.0.0.1", port: int = 0, model: str = "default"
    ) -> None:
        self.engine = engine
        self.model = model
        self._http = ThreadingHTTPServer((host, port), _handler_for(self))
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:PORT/v1``."""
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_chat_request(body: dict[str, Any]) -> tuple[list[dict[str, Any]], GenerationParams]:
    """The messages and generation parameters of an OpenAI chat-completions body.

    ``cache_salt`` (vLLM's field) is read separately: it names the cache namespace.
    """
    if not isinstance(body, dict) or "messages" not in body:
        raise ConfigError("the body must be a JSON object with 'messages'", key="messages")
    stop = body.get("stop") or []
    fields: dict[str, Any] = {
        "max_new_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or 256,
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "stop": [stop] if isinstance(stop, str) else stop,
        "seed": body.get("seed"),
    }
    if body.get("n", 1) != 1:
        raise ConfigError("only n=1 is supported", key="n")
    messages = body["messages"]
    return messages, GenerationParams(**{k: v for k, v in fields.items() if v is not None})


def _handler_for(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and proxies
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/health":
                self._json(200, {"status": "ok"})
            elif self.path.rstrip("/") == "/v1/models":
                model = {"id": server.model, "object": "model", "owned_by": "ctxproto"}
                self._json(200, {"object": "list", "data": [model]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    raise ConfigError(f"the body exceeds {MAX_BODY_BYTES} bytes")
                body = json.loads(self.rfile.read(length) or b"null")
                messages, params = parse_chat_request(body)
                prompt = server.engine.encode_chat(messages)
                salt = str(body.get("cache_salt") or "")
                handle = server.engine.submit(prompt, params, cache_namespace=salt)
            except (ConfigError, ValueError) as exc:
                self._error(400, str(exc))
                return
            except CtxprotoError as exc:
                self._error(500, str(exc))
                return
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                self._stream(handle, include_usage)
            else:
                try:
                    completion = handle.result()
                except CtxprotoError as exc:
                    self._error(500, str(exc))
                    return
                self._json(200, self._response(completion))

        def _stream(self, handle: Any, include_usage: bool) -> None:
            chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            deltas = handle.deltas()
            try:
                self._event(_chunk(chunk_id, server.model, {"role": "assistant"}, None))
                for text in deltas:
                    self._event(_chunk(chunk_id, server.model, {"content": text}, None))
                completion = handle.result()
                reason = completion.finish_reason
                self._event(_chunk(chunk_id, server.model, {}, reason))
                if include_usage:
                    usage_chunk = _chunk(chunk_id, server.model, None, None)
                    usage_chunk["usage"] = _usage(completion)
                    self._event(usage_chunk)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                deltas.close()  # the client left: stop generating for it
            except BackendError as exc:
                self._event({"error": {"message": str(exc), "type": "server_error"}})

        def _event(self, payload: dict[str, Any]) -> None:
            self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
            self.wfile.flush()

        def _response(self, completion: Completion) -> dict[str, Any]:
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": server.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": completion.text},
                        "finish_reason": completion.finish_reason,
                    }
                ],
                "usage": _usage(completion),
            }

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            self._json(status, {"error": {"message": message, "type": kind}})

    return Handler


def _chunk(
    chunk_id: str, model: str, delta: dict[str, Any] | None, finish_reason: str | None
) -> dict[str, Any]:
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    )
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


def _usage(completion: Completion) -> dict[str, Any]:
    metrics = completion.metrics
    return {
        "prompt_tokens": metrics.prompt_tokens,
        "completion_tokens": metrics.output_tokens,
        "total_tokens": metrics.prompt_tokens + metrics.output_tokens,
        "prompt_tokens_details": {"cached_tokens": metrics.cached_tokens},
    }
