"""One request's life in the engine, and the handle its caller holds.

The scheduler thread owns ``Request``; the caller's thread only reads events from
the handle's queue (text deltas, then one final ``Completion`` or error) and may
set the cancel flag. Nothing else is shared, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ctxproto.errors import BackendTimeoutError, CtxprotoError
from ctxproto.runtime.detokenizer import IncrementalDetokenizer
from ctxproto.runtime.params import Completion, GenerationParams, RequestMetrics
from ctxproto.runtime.radix_cache import TreeNode
from ctxproto.runtime.speculation import PromptLookup

__all__ = ["Request", "RequestHandle", "thread_wait"]

_Event = str | Completion | CtxprotoError


@dataclass(eq=False)
class Request:
    """State of one in-flight generation (scheduler thread only)."""

    prompt: list[int]
    params: GenerationParams
    max_new_tokens: int
    text: IncrementalDetokenizer
    eos_ids: frozenset[int]
    banned_ids: frozenset[int] = frozenset()
    """Tokens never chosen: the end-of-sequence ones under ``ignore_eos``, so the answer
    goes on as the model would continue it, as transformers' ``min_new_tokens`` and
    llama.cpp's ``ignore_eos`` do."""
    generator: Any = None
    namespace: str = ""
    cache_tokens: int | None = None
    """Leading tokens the prefix cache may keep (``None``: all, prompt and answer)."""
    drafts: PromptLookup | None = None
    """Draft source of speculative decoding (greedy requests of a speculating engine)."""
    events: queue.Queue[_Event] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrival: float = field(default_factory=time.perf_counter)
    first_token_time: float = 0.0
    output: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    forward_passes: int = 0
    """Model calls that produced output tokens (the prefill's included)."""
    locked_node: TreeNode | None = None
    finish_reason: str | None = None

    def cacheable(self, tokens: list[int]) -> list[int]:
        """The part of ``tokens`` (a prefix of prompt + output) the cache may keep."""
        return tokens if self.cache_tokens is None else tokens[: self.cache_tokens]

    def add_token(self, token: int) -> None:
        """Record one sampled token and decide whether the request is done."""
        if not self.output:
            self.first_token_time = time.perf_counter()
        self.output.append(token)
        if token in self.eos_ids:
            self.finish_reason = "stop"
            return
        delta = self.text.push(token)
        if delta:
            self.events.put(delta)
        if self.text.stopped:
            self.finish_reason = "stop"
        elif len(self.output) >= self.max_new_tokens:
            self.finish_reason = "length"

    def finish(self) -> None:
        """Send the held-back text and the final completion to the caller."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        tail = self.text.flush()
        if tail:
            self.events.put(tail)
        if self.drafts is not None:
            self.drafts.settle(self.prompt + self.output)
        metrics = RequestMetrics.from_times(
            arrival=self.arrival,
            first_token=self.first_token_time or time.perf_counter(),
            finished=time.perf_counter(),
            prompt_tokens=len(self.prompt),
            cached_tokens=self.cached_tokens,
            output_tokens=len(self.output),
            accepted_prediction_tokens=self.drafts.accepted_prediction_tokens if self.drafts else 0,
            rejected_prediction_tokens=self.drafts.rejected_prediction_tokens if self.drafts else 0,
        )
        self.events.put(
            Completion(text=self.text.text, finish_reason=self.finish_reason, metrics=metrics)
        )

    def fail(self, error: CtxprotoError) -> None:
        self.events.put(error)


class RequestHandle:
    """What ``Engine.submit`` returns: stream the text, wait for the result, or cancel."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._completion: Completion | None = None
        self._error: CtxprotoError | None = None
        """The failure that ended the request, once read: raised again by every later
        wait, which would otherwise block on a queue that gets no more events."""
        self._error_traceback: TracebackType | None = None
        """Where the failure was raised: each raise again starts from it, so the
        traceback does not grow by every earlier wait's frames."""

    def deltas(self) -> Iterator[str]:
        """Text as it is generated; closing the iterator early cancels the request.

        So does closing or dropping it before its first delta: the request is queued
        already, and a generator closed before it started runs none of its code, so
        such a request went on decoding to ``max_new_tokens`` for nobody.
        """
        return _Deltas(self, self._deltas())

    def _deltas(self) -> Generator[str, None, None]:
        finished = False
        try:
            while not self._settled():
                event = self._request.events.get()
                if isinstance(event, str):
                    yield event
                    continue
                self._settle(event)
            finished = True
            self._raise_error()
        finally:
            if not finished:
                self.cancel()

    def result(self, timeout: float | None = None) -> Completion:
        """Block until the request is finished; the text deltas are skipped.

        When ``timeout`` seconds pass first, the request is cancelled and
        ``BackendTimeoutError`` raised: nobody waits for the answer any more, so the
        engine stops it at its next step instead of decoding to ``max_new_tokens``. A
        later ``result()`` returns what was generated by then, finish reason ``cancelled``.
        A request that failed raises its error again on every later call. ``math.inf``
        waits as ``None`` does.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._settled():
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                event = self._request.events.get(timeout=thread_wait(left))
            except queue.Empty:
                self.cancel()
                raise BackendTimeoutError(f"no answer within {timeout} s") from None
            if not isinstance(event, str):
                self._settle(event)
        self._raise_error()
        assert self._completion is not None
        return self._completion

    async def aresult(self) -> Completion:
        """``result()`` for asyncio callers, waiting in a worker thread."""
        try:
            return await asyncio.to_thread(self.result)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _settle(self, event: Completion | CtxprotoError) -> None:
        """Keep the request's final event: its completion or the error that ended it."""
        if isinstance(event, CtxprotoError):
            self._error, self._error_traceback = event, event.__traceback__
        else:
            self._completion = event

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error.with_traceback(self._error_traceback)

    def _settled(self) -> bool:
        return self._completion is not None or self._error is not None

    @property
    def forward_passes(self) -> int:
        """Model calls that produced the output: fewer than its tokens when drafts
        were accepted (complete once ``result()`` returned)."""
        return self._request.forward_passes

    @property
    def token_ids(self) -> list[int]:
        """Output token ids so far (complete once ``result()`` returned)."""
        return list(self._request.output)

    def cancel(self) -> None:
        """Stop generating at the next step; the tokens so far are kept and cached."""
        self._request.cancelled.set()


def thread_wait(seconds: float | None) -> float | None:
    """``seconds`` as a timeout that ``threading`` and ``queue`` take: a wait past
    ``TIMEOUT_MAX`` (``math.inf``, no limit) raised ``OverflowError``; this one ends
    292 years on."""
    return None if seconds is None else min(seconds, threading.TIMEOUT_MAX)


class _Deltas(Iterator[str]):
    """``RequestHandle.deltas()``: its generator, and a ``close`` (also on garbage
    collection) that cancels an unfinished request even before the first delta."""

    def __init__(self, handle: RequestHandle, source: Generator[str, None, None]) -> None:
        self._handle = handle
        self._source = source

    def __next__(self) -> str:
        return next(self._source)

    def close(self) -> None:
        # Cancelled first: closing a generator another thread is running raises
        # ValueError, and the request must stop whichever way the close goes.
        if not self._handle._settled():
            self._handle.cancel()
        try:
            self._source.close()  # a started generator also cancels in its own ``finally``
        except ValueError:
            # "generator already executing": another thread waits in ``next`` for a
            # delta; the cancel above ends the request, and that ``next`` with it.
            if inspect.getgeneratorstate(self._source) != inspect.GEN_RUNNING:
                raise

    def __del__(self) -> None:
        self.close()
