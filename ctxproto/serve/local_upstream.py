"""The bundled runtime as an upstream, in this process (``upstream: {type: local}``).

Requests are validated and bounded before the engine sees them: a prompt whose
UTF-8 size alone proves it cannot fit the context window is refused without
tokenizing it (a token never covers more bytes than the longest vocabulary
entry), so a 14 MB body costs microseconds, not seconds. Tokenizing runs in a
worker thread, never on the event loop. Closing a stream (read or not), or
cancelling a non-streaming request (its client left), cancels the engine
request: decoding stops at the next step.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import anyio.to_thread

from ctxproto.errors import ConfigError
from ctxproto.messages import known_fields, non_text_part
from ctxproto.runtime.engine import Engine
from ctxproto.runtime.params import Completion, GenerationParams
from ctxproto.runtime.request import RequestHandle
from ctxproto.serve.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    DeltaMessage,
    Prediction,
    ResponseMessage,
    Usage,
)
from ctxproto.serve.upstream import Upstream, UpstreamStream, embeddings_not_served

__all__ = ["LocalUpstream", "generation_params"]


class LocalUpstream(Upstream):
    """Answers with an ``Engine``; tenants get separate prefix-cache namespaces."""

    def __init__(self, engine: Engine, *, model: str = "default", owned: bool = False) -> None:
        self.engine = engine
        self.model = model
        self._owned = owned
        vocabulary = engine.tokenizer.get_vocab()
        self._max_token_bytes = max((len(token) for token in vocabulary), default=1) or 1

    async def complete(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> ChatCompletionResponse:
        handle = await self._submit(body, tenant, cache_messages)
        try:
            completion = await anyio.to_thread.run_sync(handle.result, abandon_on_cancel=True)
        finally:
            handle.cancel()  # a no-op once finished; stops decoding if the caller left
        return ChatCompletionResponse(
            model=self.model,
            choices=[
                Choice(
                    message=ResponseMessage(content=completion.text),
                    finish_reason=_finish_reason(completion),
                )
            ],
            usage=_usage(completion),
        )

    async def stream(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> UpstreamStream:
        handle = await self._submit(body, tenant, cache_messages)

        async def cancel() -> None:
            handle.cancel()  # a no-op once finished; else decoding stops at the next step

        return UpstreamStream(self._chunks(handle), cancel)

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        """Refused: the engine runs a chat model, which has no embeddings to give."""
        raise embeddings_not_served("the bundled runtime")

    async def ready(self) -> str | None:
        """The engine's failure, once it takes no more requests: ``/health`` turns 503
        rather than a load balancer sending it requests that fail at once."""
        failure = self.engine.failure
        return None if failure is None else f"upstream: {failure}"

    async def aclose(self) -> None:
        if self._owned:
            await anyio.to_thread.run_sync(self.engine.close)

    async def _chunks(self, handle: RequestHandle) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The answer's chunks; the ``UpstreamStream`` they go out in cancels ``handle``."""
        deltas: Iterator[str] = handle.deltas()
        yield ChatCompletionChunk(
            choices=[ChunkChoice(delta=DeltaMessage(role="assistant", content=""))]
        )
        while (text := await anyio.to_thread.run_sync(next, deltas, None)) is not None:
            yield ChatCompletionChunk(choices=[ChunkChoice(delta=DeltaMessage(content=text))])
        completion = handle.result()
        yield ChatCompletionChunk(choices=[ChunkChoice(finish_reason=_finish_reason(completion))])
        yield ChatCompletionChunk(usage=_usage(completion))

    async def _submit(
        self, body: dict[str, Any], tenant: str, cache_messages: int | None
    ) -> RequestHandle:
        messages = _text_messages(body["messages"])
        params = generation_params(body)
        if cache_messages is not None:
            params = params.model_copy(update={"cache_messages": cache_messages})
        size = len(json.dumps(messages, ensure_ascii=False).encode("utf-8"))
        if size > self.engine.context_window * self._max_token_bytes:
            raise ConfigError(
                f"the messages ({size} bytes) cannot fit the model's context window of "
                f"{self.engine.context_window} tokens",
                key="messages",
            )
        namespace = _namespace(tenant, body)
        return await anyio.to_thread.run_sync(
            lambda: self.engine.submit_chat(messages, params, cache_namespace=namespace)
        )


def generation_params(body: dict[str, Any]) -> GenerationParams:
    """The engine's parameters from a validated chat-completions body."""
    stop = body.get("stop") or []
    fields: dict[str, Any] = {
        "max_new_tokens": body.get("max_completion_tokens") or body.get("max_tokens"),
        # OpenAI's default is 1.0, not the SDK's greedy 0.0; a null asks for the default.
        "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
        "top_p": body.get("top_p"),
        "stop": [stop] if isinstance(stop, str) else stop,
        "seed": body.get("seed"),
        "ignore_eos": body.get("ignore_eos"),
        "prediction": Prediction.model_validate(body["prediction"]).text
        if body.get("prediction")
        else None,
    }
    return GenerationParams(**{k: v for k, v in fields.items() if v is not None})


def _text_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the chat template reads them; a part it cannot read is a 400."""
    found = non_text_part(messages)
    if found is not None:
        index, kind = found
        raise ConfigError(
            f"the bundled runtime's model reads text only, and message {index} has a '{kind}' part",
            key=f"messages[{index}].content",
        )
    return [known_fields(message) for message in messages]


def _namespace(tenant: str, body: dict[str, Any]) -> str:
    """The prefix-cache namespace: the tenant's, narrowed by a client's ``cache_salt`` (vLLM's).

    A salt never leaves its tenant's namespace; the ``default`` tenant with no salt
    shares the engine's own namespace, as in-process callers do.
    """
    parts = ["" if tenant == "default" else tenant, str(body.get("cache_salt") or "")]
    return "\x1f".join(parts) if any(parts) else ""


def _finish_reason(completion: Completion) -> str:
    # "cancelled" is ours; a client that is still listening never sees it.
    return completion.finish_reason if completion.finish_reason != "cancelled" else "stop"


def _usage(completion: Completion) -> Usage:
    metrics = completion.metrics
    return Usage.of(
        metrics.prompt_tokens,
        metrics.output_tokens,
        metrics.cached_tokens,
        accepted_prediction=metrics.accepted_prediction_tokens,
        rejected_prediction=metrics.rejected_prediction_tokens,
    )
