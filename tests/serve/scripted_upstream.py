"""A tiny OpenAI-compatible upstream whose answers are scripted by the request.

A real ASGI app on a real socket (no patched clients): it answers
``"<first user message> | <last user message>"``, calls the first tool when
``tools`` are given and the last message is the user's, and obeys commands in
the last user message: ``FAIL <status> <times> <tag>`` (fail that many times,
in older vLLM's ``{"object": "error"}`` shape), ``MIDFAIL`` (fail mid-stream),
``CUT`` (end the stream mid-answer, cleanly but with no finish reason nor ``[DONE]``),
``NOFINISH`` (the whole answer and ``[DONE]``, but no chunk with a finish reason),
``SLOW <seconds>`` (wait between chunks), ``SURROGATE`` (end the answer with half
a surrogate pair, as a server counting UTF-16 units may split an emoji;
``RAWSURROGATE``: the same half written as raw bytes, not as an escape),
``STALL <seconds>`` (send the headers and the first bytes of a whole answer, then
wait), ``NULLDETAILS`` (usage details null, as a server dumping the openai SDK's own
usage objects sends them; ``SDKUSAGE``: the usage the openai SDK's own objects dump,
details there and their counts null; ``NOUSAGE``: a whole answer's usage null;
``BADUSAGE <count> <json>``: the usage count named, ``cached_tokens`` included, set to
the JSON value given, such as ``-1`` or ``"7"``),
``REFUSE`` (a refusal, as OpenAI answers one: ``"content": null`` beside ``refusal``,
streamed as ``refusal`` deltas), ``LINGER <seconds>`` (wait after the chunk with the
finish reason, before the usage chunk and ``[DONE]``), ``LATEFAIL`` (an error
event after the finish reason, in place of ``[DONE]``), ``PAGE <status>`` (as below).
An answer longer than ``max_tokens`` words is cut there, with finish reason ``length``.
Every body it gets is recorded, and the ``x-request-id`` it came with; it answers each request
with its own ``x-request-id`` (``scripted-<n>``, as OpenAI's API names its own).

``/v1/embeddings`` embeds each input as ``[characters, index, 0.5]`` (base64 when
asked, as the openai client asks by default) and obeys ``FAIL``, ``SLOW <seconds>``
(wait before answering) and ``PAGE <status>`` (an HTML page with that status, naming
an internal host, as a web server in front of a model server answers) in its first input;
``embedded`` keeps each request it got (body, ``authorization``, ``x-request-id``)
and the bytes it answered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from openai.types.completion_usage import (
    CompletionTokensDetails,
    CompletionUsage,
    PromptTokensDetails,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass
class Embedded:
    """One embeddings request as the upstream got it, and what it answered."""

    body: dict[str, Any]
    authorization: str | None
    request_id: str | None
    answer: bytes = b""


REFUSAL = "I can't help with that."
"""What ``REFUSE`` answers."""

ERROR_PAGE = "<html><body><h1>Not here</h1>nginx at internal-host-10.0.3.7</body></html>"
"""What ``PAGE <status>`` answers: a web server's page that names an internal host."""


class ScriptedUpstream:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.request_ids: list[str | None] = []
        """The ``x-request-id`` each chat request came with, in order."""
        self.failures: Counter[str] = Counter()
        self.chunks_sent = 0
        self.embedded: list[Embedded] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ],
            middleware=[Middleware(_OwnRequestIds)],
        )

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        self.request_ids.append(request.headers.get("x-request-id"))
        messages = body["messages"]
        users = [_text(m.get("content")) for m in messages if m["role"] == "user"]
        last = messages[-1]
        command = _text(last.get("content")).split() if last["role"] == "user" else []
        failure = self._failure(command)
        if failure is not None:
            return failure
        if command[:1] == ["PAGE"]:  # PAGE <status>: a web server's or gateway's page
            return HTMLResponse(ERROR_PAGE, status_code=int(command[1]))
        said = f"{users[0]} | {users[-1]}" if users else "(no user message)"  # as OpenAI answers
        message: dict[str, Any] = {"role": "assistant", "content": said}
        finish = "stop"
        if last["role"] == "tool":
            message["content"] = f"tool said: {last['content']}"
        elif body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            call = {
                "id": "call_1",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps({"q": users[-1]})},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        if command[:1] == ["REFUSE"]:
            message = {"role": "assistant", "content": None, "refusal": REFUSAL}
        if command[:1] in (["SURROGATE"], ["RAWSURROGATE"]):
            message["content"] += " \ud83d"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        words = (message.get("content") or "").split(" ")
        if limit and len(words) > limit:
            message["content"], finish = " ".join(words[:limit]), "length"
        answered = len((message.get("content") or "").split())  # its tokens are words
        usage: dict[str, Any] = {
            "prompt_tokens": 7,
            "completion_tokens": answered,
            "total_tokens": 7 + answered,
            "prompt_tokens_details": {"cached_tokens": 2},
        }
        if command[:1] == ["NULLDETAILS"]:
            usage.update(prompt_tokens_details=None, completion_tokens_details=None)
        if command[:1] == ["BADUSAGE"]:
            count, value = command[1], json.loads(command[2])
            counts = usage["prompt_tokens_details"] if count == "cached_tokens" else usage
            counts[count] = value
        if command[:1] == ["SDKUSAGE"]:
            usage = CompletionUsage(
                prompt_tokens=7,
                completion_tokens=answered,
                total_tokens=7 + answered,
                prompt_tokens_details=PromptTokensDetails(audio_tokens=0),
                completion_tokens_details=CompletionTokensDetails(reasoning_tokens=0),
            ).model_dump()
        base = {"id": "up-1", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "finish_reason": finish}
            whole = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            if command[:1] == ["NOUSAGE"]:
                whole["usage"] = None
            if command[:1] == ["STALL"]:
                return StreamingResponse(_stalled(json.dumps(whole), float(command[1])))
            # json.dumps escapes what is not ASCII (half a surrogate pair too).
            text = json.dumps(whole, ensure_ascii=command[:1] != ["RAWSURROGATE"])
            return Response(text.encode("utf-8", "surrogatepass"), media_type="application/json")
        delay = float(command[1]) if command[:1] == ["SLOW"] else 0.0
        linger = float(command[1]) if command[:1] == ["LINGER"] else 0.0
        return StreamingResponse(
            self._events(base, message, finish, usage, body, delay, linger, command[:1]),
            media_type="text/event-stream",
        )

    def _failure(self, command: list[str]) -> Response | None:
        """The failure ``FAIL <status> <times> <tag> [<retry-after>]`` asks for, while it
        has times left (``retry-after: 0`` unless given)."""
        if command[:1] != ["FAIL"]:
            return None
        status, times, tag = int(command[1]), int(command[2]), command[3]
        retry_after = command[4] if len(command) > 4 else "0"
        if self.failures[tag] >= times:
            return None
        self.failures[tag] += 1
        error = {"object": "error", "message": f"scripted {status}", "type": "x", "code": status}
        return JSONResponse(error, status_code=status, headers={"retry-after": retry_after})

    async def _embeddings(self, request: Request) -> Response:
        body = await request.json()
        got = Embedded(
            body, request.headers.get("authorization"), request.headers.get("x-request-id")
        )
        self.embedded.append(got)
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        command = str(texts[0]).split()
        failure = self._failure(command)
        if failure is not None:
            return failure
        if command[:1] == ["SLOW"]:
            await asyncio.sleep(float(command[1]))
        if command[:1] == ["PAGE"]:
            return HTMLResponse(ERROR_PAGE, status_code=int(command[1]))
        data = []
        for index, text in enumerate(texts):
            vector = [float(len(text)), float(index), 0.5]
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = base64.b64encode(packed).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(str(text).split()) for text in texts)
        answer = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        got.answer = json.dumps(answer).encode()
        return Response(got.answer, media_type="application/json")

    async def _events(
        self,
        base: dict[str, Any],
        message: dict[str, Any],
        finish: str,
        usage: dict[str, Any],
        body: dict[str, Any],
        delay: float,
        linger: float,
        command: list[str],
    ) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }

        yield _sse(chunk({"role": "assistant", "content": ""}))
        if message.get("tool_calls"):
            call = message["tool_calls"][0]
            yield _sse(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            yield _sse(
                chunk(
                    {
                        "tool_calls": [
                            {"index": 0, "function": {"arguments": call["function"]["arguments"]}}
                        ]
                    }
                )
            )
        elif message.get("refusal"):
            for index, word in enumerate(message["refusal"].split(" ")):
                yield _sse(chunk({"refusal": word if index == 0 else " " + word}))
        else:
            for index, word in enumerate(message["content"].split(" ")):
                if command == ["MIDFAIL"] and index == 2:
                    yield _sse({"error": {"message": "scripted failure", "type": "server_error"}})
                    return
                if command == ["CUT"] and index == 2:
                    return
                await asyncio.sleep(delay)
                self.chunks_sent += 1
                yield _sse(chunk({"content": word if index == 0 else " " + word}))
        if command != ["NOFINISH"]:
            yield _sse(chunk({}, finish))
        await asyncio.sleep(linger)
        if command == ["LATEFAIL"]:
            yield _sse({"error": {"message": "scripted failure", "type": "server_error"}})
            return
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"


class _OwnRequestIds:
    """Answers every request with an ``x-request-id`` of the upstream's own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.answered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.answered += 1
        own = (b"x-request-id", f"scripted-{self.answered}".encode())

        async def send_own(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), own]}
            await send(message)

        await self.app(scope, receive, send_own)


def _text(content: Any) -> str:
    """A message's text: its string, or its text parts joined."""
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content or ""


async def _stalled(text: str, seconds: float) -> AsyncIterator[bytes]:
    yield text[:10].encode()
    await asyncio.sleep(seconds)
    yield text[10:].encode()


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
