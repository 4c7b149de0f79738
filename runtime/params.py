"""What a caller asks of a generation and what it gets back: the runtime's wire types.

These cross boundaries (Python callers, the HTTP server, the HTTP backend), so they
are pydantic models with unknown keys forbidden; a bad value raises ``ConfigError``
naming the key, as everywhere else in ctxproto.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ctxproto.errors import ConfigError

__all__ = ["GREEDY_BELOW", "Completion", "GenerationParams", "RequestMetrics"]

GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily: logits divided by much less overflow float32
to infinity (1e-38 does) and the sampling probabilities become NaN, while the greedy
token is what sampling tends to as the temperature falls."""


class GenerationParams(BaseModel):
    """Sampling and stopping parameters of one request (OpenAI chat-completion names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(default=256, ge=1)
    """Upper bound on generated tokens; the model's context window may lower it."""
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """0 means greedy decoding (deterministic, and what the prefix-cache tests compare);
    so does any temperature below ``GREEDY_BELOW`` (1e-5)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass; used only when sampling (``greedy`` is false)."""
    stop: list[str] = Field(default_factory=list)
    """Strings that end the answer; the matched string is not part of the text."""
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    """Seed of the request's own random generator, for reproducible sampling: an int64,
    the range the proxy's protocol accepts (torch's generators fail past 64 bits)."""
    ignore_eos: bool = False
    """Generate ``max_new_tokens`` tokens whatever the model says: its end-of-sequence
    token does not end the answer (a stop string still does). For benchmarks that
    compare answers of one length; vLLM and llama.cpp's server take the same name."""
    prediction: str | None = None
    """Text the answer is expected to repeat, as OpenAI's Predicted Outputs: the text an
    edit rewrites, a template, an earlier answer. A greedy request on an engine that
    speculates drafts from it first (``speculation.py``); the answer's tokens are the
    model's own either way. Sampling requests ignore it."""
    cache_messages: int | None = Field(default=None, ge=0)
    """How many leading messages the next request will send again: the prefix cache
    keeps the KV of those only, not of the rest of the prompt nor of the answer.
    ``None`` keeps all of it. ``ChatSession`` and the proxy set it when the pipeline
    changed the last message (documents placed with the question, say), so the KV of
    text they will never send again does not push out the prefixes they will."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc) from None
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must not be empty", key="stop")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or None
    return ConfigError(f"invalid generation parameter: {first['msg']}", key=key)


class RequestMetrics(BaseModel):
    """Per-request timings and token counts, as vLLM's ``benchmark_serving`` defines them.

    TTFT runs from arrival to the first output token; TPOT is the mean time between
    later tokens, ``(latency - ttft) / (output_tokens - 1)``; output tokens per second
    is ``output_tokens / latency``.
    """

    ttft_ms: float
    tpot_ms: float
    latency_ms: float
    prompt_tokens: int
    cached_tokens: int
    """Prompt tokens whose KV came from the prefix cache instead of being computed."""
    output_tokens: int
    output_tokens_per_s: float
    accepted_prediction_tokens: int = 0
    """Tokens of the request's ``prediction`` the answer repeated, in its order."""
    rejected_prediction_tokens: int = 0
    """The prediction's other tokens, which the answer did not repeat (OpenAI's names)."""

    @classmethod
    def from_times(
        cls,
        *,
        arrival: float,
        first_token: float,
        finished: float,
        prompt_tokens: int,
        cached_tokens: int,
        output_tokens: int,
        accepted_prediction_tokens: int = 0,
        rejected_prediction_tokens: int = 0,
    ) -> RequestMetrics:
        latency = max(finished - arrival, 0.0)
        ttft = max(first_token - arrival, 0.0)
        tpot = (latency - ttft) / (output_tokens - 1) if output_tokens > 1 else 0.0
        return cls(
            ttft_ms=ttft * 1000,
            tpot_ms=tpot * 1000,
            latency_ms=latency * 1000,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            output_tokens=output_tokens,
            output_tokens_per_s=output_tokens / latency if latency > 0 else 0.0,
            accepted_prediction_tokens=accepted_prediction_tokens,
            rejected_prediction_tokens=rejected_prediction_tokens,
        )


class Completion(BaseModel):
    """The answer to one request."""

    text: str
    finish_reason: str
    """``stop`` (end of turn or a stop string), ``length`` (token limit) or ``cancelled``."""
    metrics: RequestMetrics
