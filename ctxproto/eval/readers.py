"""Readers: a model that answers the question from an assembled prompt.

A reader turns "the answer is still in the prompt" into "the model still gets it
right". It goes through the runtime's backend interface
(``ctxproto.runtime.backends``): ``bundled`` is the local engine with the
embedded SmolLM2-135M-Instruct — a weak reader, reported as such and never tuned
to — and ``openai:URL`` any OpenAI-compatible server (vLLM, SGLang, a hosted API)
for a stronger one. Answers are greedy and short, so runs are reproducible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ctxproto.errors import ConfigError

if TYPE_CHECKING:
    from ctxproto.runtime.backends import Backend

__all__ = ["READER_MAX_NEW_TOKENS", "Reader", "reader_from_spec"]

READER_MAX_NEW_TOKENS = 32


class Reader:
    """Answers an assembled chat through a backend, greedily and briefly."""

    def __init__(self, backend: Backend, name: str) -> None:
        from ctxproto.runtime.backends import GenerationParams

        self.backend = backend
        self.name = name
        self.params = GenerationParams(max_new_tokens=READER_MAX_NEW_TOKENS, temperature=0.0)

    def answer(self, messages: list[dict[str, Any]]) -> str:
        """The model's reply to the chat messages."""
        return self.backend.generate(messages, self.params).text

    def close(self) -> None:
        """Release the backend (the local engine's model and cache)."""
        self.backend.close()


def reader_from_spec(spec: str) -> Reader | None:
    """``none`` -> no reader; ``bundled`` -> the local engine; ``openai:URL`` -> HTTP backend."""
    if spec == "none":
        return None
    if spec == "bundled":
        from ctxproto.runtime.backends import LocalBackend

        return Reader(LocalBackend(), "bundled")
    prefix = "openai:"
    if spec.startswith(prefix) and len(spec) > len(prefix):
        from ctxproto.runtime.backends import OpenAIBackend

        return Reader(OpenAIBackend(spec[len(prefix) :]), spec)
    raise ConfigError(
        f"unknown reader '{spec}'", key="--reader", expected="none, bundled or openai:URL"
    )
