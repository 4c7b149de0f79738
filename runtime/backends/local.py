"""The backend that runs the bundled engine in this process."""

from __future__ import annotations

from typing import Any

from ctxproto.runtime.backends.base import Backend, CompletionStream
from ctxproto.runtime.engine import Engine
from ctxproto.runtime.params import Completion, GenerationParams
from ctxproto.runtime.request import RequestHandle

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """Serves requests with a local ``Engine`` (by default the embedded SmolLM2-135M).

    An engine passed in stays the caller's to close; one created here is closed
    with the backend. ``cache_namespace`` keeps this backend's cached prefixes apart
    from other namespaces on the same engine (one backend per tenant).
    """

    def __init__(self, engine: Engine | None = None, *, cache_namespace: str = "") -> None:
        self._owned = engine is None
        self.engine = engine if engine is not None else Engine()
        self.cache_namespace = cache_namespace

    def generate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        return self._submit(messages, params).result()

    def stream(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> CompletionStream:
        handle = self._submit(messages, params)
        return CompletionStream(handle.deltas(), lambda _text: handle.result(), handle.cancel)

    async def agenerate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        return await self._submit(messages, params).aresult()

    def _submit(
        self, messages: list[dict[str, Any]], params: GenerationParams | None
    ) -> RequestHandle:
        return self.engine.submit_chat(messages, params, cache_namespace=self.cache_namespace)

    def close(self) -> None:
        if self._owned:
            self.engine.close()
