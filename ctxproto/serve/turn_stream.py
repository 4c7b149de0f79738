"""A streamed turn's response: its chunks as server-sent events, and the turn filed once
the answer is whole.

Filing depends on the answer, not on the client still listening. The answer is
whole once its finish reason has come; it is then filed (the semantic cache, a
stateful session's history) before ``[DONE]`` is sent, so a client that has
``[DONE]`` finds its turn stored, or, when the client is gone before that, once
the response is over. A client may well hang up on the finish reason, before
the usage chunk and ``[DONE]``: it has the whole answer, and its next turn must
find this one in the history. Two rules stay:

- An answer cut short (the client gone mid-answer) is filed nowhere: the
  upstream's stream is closed at once, which stops its decoding.
- Neither is a turn whose client was sent an error event (an upstream failure,
  the shutdown cutoff), even one that failed after its finish reason.

The filing runs before the turn's session is released, so the session's next
turn sees it, and shielded, so the server's stop does not cut it halfway.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import anyio
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ctxproto.errors import CtxprotoError
from ctxproto.serve.answer import AnswerAccumulator
from ctxproto.serve.envelope import error_payload, to_api_error
from ctxproto.serve.flow import Turn
from ctxproto.serve.metrics import CLIENT_CLOSED_REQUEST
from ctxproto.serve.protocol import ChatCompletionChunk, Usage, completion_id
from ctxproto.serve.request_id import current_request, note_error, request_log
from ctxproto.serve.state import ProxyState

__all__ = ["TurnStream", "close_source"]

log = request_log


class TurnStream(StreamingResponse):
    """The SSE response of one streamed turn; ``release`` frees its session and tenant
    slot however it ends.

    Done here rather than in the body generator: a client that disconnects before
    the first chunk leaves the generator unstarted, and its ``finally`` never runs.
    """

    def __init__(
        self,
        state: ProxyState,
        turn: Turn,
        source: AsyncIterator[ChatCompletionChunk],
        *,
        model: str,
        include_usage: bool,
        release: Callable[[], None],
        headers: dict[str, str],
    ) -> None:
        self._state = state
        self._turn = turn
        self._source = source
        self._model = model
        self._include_usage = include_usage
        self._release = release
        self._answer = AnswerAccumulator()
        self._usage = Usage()
        self._failed = False
        """The client was sent an error event (or the stream broke off on a fault of ours)."""
        self._filed = False
        """Filed before ``[DONE]``, or (the client gone first) once the response is over."""
        self._ended = False
        """``[DONE]`` was sent: the client read the stream to its end."""
        self._events = self._sse()
        super().__init__(self._events, media_type="text/event-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect as exc:
            record = current_request()
            if record is None or not record.client_gone:
                # Starlette under ASGI 2.4 makes any OSError out of the stream a
                # ClientDisconnect, one the chunks raised too (a full disk, a broken
                # socket to a store) while the client still reads: a fault of ours,
                # raised as itself for its traceback and its 500 (internal_error).
                fault = exc.__context__
                raise (fault if isinstance(fault, OSError) else exc) from None
            # The server's send raised: the client gone mid-answer, as 2.3's
            # http.disconnect says it. Counted and noted as that below (a 499), never
            # a server error with a traceback.
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._events.aclose()
                    await close_source(self._source)
                    await self._file()
                    if not (self._filed or self._failed):
                        if self._ended:
                            # Read to [DONE], an answer the upstream sent no finish
                            # reason for: never filed, but answered all the same.
                            self._state.record(self._turn, self._usage)
                        else:  # the client left mid-answer
                            self._state.metrics.client_left()
                            note_error(499, CLIENT_CLOSED_REQUEST, "the client left mid-answer")
                except CtxprotoError as exc:  # the client is gone: only the log can tell
                    log.warning(
                        "a streamed turn of tenant %s was not stored: %s", self._turn.tenant, exc
                    )
                finally:
                    self._release()

    async def _file(self) -> None:
        """File the answer (cache, then history) if it is whole and the client was not
        told the turn failed; once, shielded, so that nothing cancels it halfway."""
        message = self._answer.message()  # None until the finish reason came
        if self._filed or message is None or self._failed:
            return
        self._filed = True
        self._state.record(self._turn, self._usage)
        with anyio.CancelScope(shield=True):
            await self._state.flow.finish(
                self._turn,
                message,
                self._answer.finish_reason,
                self._usage.completion_tokens or None,
            )

    async def _sse(self) -> AsyncGenerator[bytes, None]:
        """Chunks restamped with one id, created time and model; a failure mid-stream (or
        in filing the answer) is sent as an error event and ends the stream.

        So is the server's shutdown cutoff (``ShutdownCutoff``): the wait for each
        chunk is guarded, never the ``yield`` (a cancel scope must not span one).
        """
        state = self._state
        chunk_id, created = completion_id(), int(time.time())
        started = time.perf_counter()
        try:
            while True:
                with state.cutoff.guard():
                    chunk = await anext(self._source, None)
                if chunk is None:
                    break
                chunk.id, chunk.created, chunk.model = chunk_id, created, self._model
                self._answer.add(chunk)
                if chunk.usage is not None:
                    self._usage = chunk.usage
                    if not self._include_usage:
                        if not chunk.choices:
                            continue
                        chunk.usage = None
                yield chunk.sse()
            if self._turn.answer is None:
                state.metrics.upstream_latency.labels(
                    route="chat_completions", stream="true"
                ).observe(time.perf_counter() - started)
            # Before [DONE]: a client that has it finds the turn in the session's history.
            await self._file()
        except Exception as exc:
            # Told or not (an error event; for a fault of ours, a stream broken off),
            # the client has no answer it can trust: nothing is filed.
            self._failed = True
            if not isinstance(exc, CtxprotoError):
                raise
            error = to_api_error(exc)
            state.metrics.errors.labels(code=error.code).inc()
            note_error(error.status, error.code, error.message)
            yield b"data: " + error_payload(error).model_dump_json().encode() + b"\n\n"
            return
        yield b"data: [DONE]\n\n"
        self._ended = True  # resumed only once [DONE] was sent


async def close_source(source: AsyncIterator[Any]) -> None:
    """Close the upstream's stream: a client gone mid-answer stops its decoding."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()
