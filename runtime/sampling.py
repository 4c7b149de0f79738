"""Choosing the next token from the logits: greedy, or temperature + top-p (nucleus) sampling.

Nucleus sampling follows Holtzman et al. 2020 ("The Curious Case of Neural Text
Degeneration"): keep the smallest set of tokens whose probability mass reaches
``top_p``. Each request samples from its own generator, so a seeded request gives
the same answer whether or not it shares a batch with others.
"""

from __future__ import annotations

from typing import Any

from ctxproto._extras import require
from ctxproto.runtime.params import GenerationParams

__all__ = ["request_generator", "sample_next"]


def request_generator(params: GenerationParams, device: Any) -> Any:
    """The random generator of one sampling request (``None`` for greedy decoding)."""
    if params.greedy:
        return None
    torch = require("torch", extra="runtime")
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def sample_next(
    logits: Any, params: GenerationParams, generator: Any, banned: frozenset[int] = frozenset()
) -> int:
    """Next token id from one row of logits ``[vocab]``, never one of ``banned``."""
    torch = require("torch", extra="runtime")
    if banned:
        logits = logits.clone()
        logits[list(banned)] = float("-inf")
    if params.greedy:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[before >= params.top_p] = 0.0  # the top token always survives
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
