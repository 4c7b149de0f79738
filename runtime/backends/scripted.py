"""A backend that answers from a script: for tests and examples, no model, no network.

Like httpx's ``MockTransport`` or pydantic-ai's ``TestModel``, it is a real
implementation of the interface, not a patched object: the code under test
takes the same path as with the engine (``generate``, ``stream`` with its
``CompletionStream``, metrics), and the test can check what was asked.

Text is measured in words, each with the whitespace after it, so a reply cut
by ``max_new_tokens`` ends on a word boundary and token counts are easy to
reason about. Prompts are measured the same way over ``role: content`` lines,
and ``cached_tokens`` is the longest prefix shared with an earlier prompt (its
first ``cache_messages`` messages when it set them), as a prefix cache that
never evicts would report it (short of the whole prompt: an engine computes at
least the last token).
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ctxproto.errors import BackendError
from ctxproto.runtime.backends.base import Backend, CompletionStream
from ctxproto.runtime.params import Completion, GenerationParams, RequestMetrics
from ctxproto.runtime.radix_cache import common_prefix_length

__all__ = ["Responder", "ScriptedBackend", "ScriptedRequest"]

Responder = Callable[[list[dict[str, Any]]], str]
"""A function from the chat messages to the reply."""

_TOKEN = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class ScriptedRequest:
    """One request the backend received."""

    messages: list[dict[str, Any]]
    """A copy of the chat messages, as sent."""
    params: GenerationParams


class ScriptedBackend(Backend):
    """Answers with ``replies`` in order, or with ``replies(messages)`` when it is a function.

    Honours ``max_new_tokens`` (finish reason ``length``) and ``stop`` (the text
    ends before the first stop string; finish reason ``stop``). Running out of
    scripted replies raises ``BackendError``, so a test that asks more than it
    meant to fails loudly. ``requests`` records every request, ``calls`` counts
    them and ``cancelled`` counts streams closed before their end.
    """

    def __init__(self, replies: Sequence[str] | Responder) -> None:
        self._respond = replies if callable(replies) else None
        self._replies = list(replies) if not callable(replies) else []
        self._lock = threading.Lock()
        self._prompts: list[list[str]] = []
        self.requests: list[ScriptedRequest] = []
        self.cancelled = 0

    @property
    def calls(self) -> int:
        """Requests received so far, answered or not."""
        return len(self.requests)

    def generate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        start = time.perf_counter()
        text, finish_reason, prompt, cached = self._answer(messages, params)
        now = time.perf_counter()
        metrics = _metrics(start, now, now, prompt, cached, len(_tokens(text)))
        return Completion(text=text, finish_reason=finish_reason, metrics=metrics)

    def stream(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> CompletionStream:
        start = time.perf_counter()
        text, finish_reason, prompt, cached = self._answer(messages, params)
        first_token: list[float] = []

        def deltas() -> Iterator[str]:
            for token in _tokens(text):
                if not first_token:
                    first_token.append(time.perf_counter())
                yield token

        def finish(streamed: str) -> Completion:
            now = time.perf_counter()
            first = first_token[0] if first_token else now
            metrics = _metrics(start, first, now, prompt, cached, len(_tokens(streamed)))
            return Completion(text=streamed, finish_reason=finish_reason, metrics=metrics)

        return CompletionStream(deltas(), finish, self._count_cancel)

    def _answer(
        self, messages: list[dict[str, Any]], params: GenerationParams | None
    ) -> tuple[str, str, int, int]:
        """The reply cut to ``params``, its finish reason, prompt and cached prompt tokens."""
        params = params or GenerationParams()
        prompt = _transcript(messages)
        kept = (
            prompt
            if params.cache_messages is None
            else _transcript(messages[: params.cache_messages])
        )
        with self._lock:
            self.requests.append(ScriptedRequest(copy.deepcopy(messages), params))
            shared = max((common_prefix_length(seen, prompt) for seen in self._prompts), default=0)
            cached = min(shared, max(len(prompt) - 1, 0))  # the last token is always computed
            self._prompts.append(kept)
            if self._respond is None:
                if not self._replies:
                    raise BackendError(
                        f"the script has no reply left for request {self.calls}: "
                        "give ScriptedBackend more replies"
                    )
                reply = self._replies.pop(0)
        if self._respond is not None:
            reply = self._respond(copy.deepcopy(messages))
        text, finish_reason = _cut(reply, params)
        return text, finish_reason, len(prompt), cached

    def _count_cancel(self) -> None:
        with self._lock:
            self.cancelled += 1


def _cut(reply: str, params: GenerationParams) -> tuple[str, str]:
    """What an engine would return: up to the first stop string, at most max_new_tokens."""
    stops = [reply.find(stop) for stop in params.stop if stop in reply]
    text = reply[: min(stops)] if stops else reply
    tokens = _tokens(text)
    if len(tokens) > params.max_new_tokens:
        return "".join(tokens[: params.max_new_tokens]).rstrip(), "length"
    return text, "stop"


def _transcript(messages: list[dict[str, Any]]) -> list[str]:
    """Prompt tokens as this backend counts them: words of ``role: content`` lines."""
    return _tokens("".join(f"{m.get('role')}: {m.get('content') or ''}\n" for m in messages))


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _metrics(
    start: float, first_token: float, finished: float, prompt: int, cached: int, output: int
) -> RequestMetrics:
    return RequestMetrics.from_times(
        arrival=start,
        first_token=first_token,
        finished=finished,
        prompt_tokens=prompt,
        cached_tokens=cached,
        output_tokens=output,
    )
