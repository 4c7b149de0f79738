"""Prefill in pieces that the model's fused layers take whole.

On the CPU the engine's copy of the model runs a forward of up to ``packed_rows()``
rows through its fused decoder layers: the products multiply the GGUF blocks in
ctxproto's kernel, and the attention is ctxproto's kernel too. A longer forward
falls back to the wrapped layers, whose float32 products are torch's BLAS and
whose attention is torch's SDPA, and on an AMD EPYC that was 1.25-1.5x slower per
token than the same prompt fed in pieces of 64 (``docs/runtime.md``, "Prefill in
pieces"). So a longer prefill is fed to the fused layers piece by piece, as
llama.cpp feeds a prompt in micro-batches and vLLM in chunks: each piece's KV is
in the cache before the next piece attends to it, so every token sees the keys
it would in one forward; only the order of some sums differs.

Pieces before the last need no logits: only the decoder runs on them. A model
without fused layers (on a GPU, in the bf16, int8 and int8_weights modes, another
architecture), or a batch of so many rows that a piece would be a few tokens, is
fed in one forward, as before; so is every prefill with AVX2 kernels, whose pieces
(``PACKED_ROWS_AVX2``, 8 rows) would be a few tokens: there torch's float32 products
and attention are the faster ones past that.
"""

from __future__ import annotations

from typing import Any

from ctxproto._extras import require
from ctxproto.models.fused_decoder import fused_rows

__all__ = ["prefill"]

_FEWEST_TOKENS = 16
"""Tokens per row below which pieces are not worth their forwards (a batch of more
than 4 rows is fed whole)."""


def prefill(model: Any, input_ids: Any, cache: Any, start: int = 0) -> Any:
    """Feed ``input_ids`` (``[rows, length]``, rows of one length, no padding) at
    positions ``start ..`` into ``cache``.

    Returns the model's output for the last piece, with the logits of its last
    position only.
    """
    torch = require("torch", extra="runtime")
    rows, length = input_ids.shape
    piece = (fused_rows(model) or 0) // rows
    if piece < _FEWEST_TOKENS:
        piece = length
    device = input_ids.device

    def positions(begin: int, end: int) -> Any:
        return torch.arange(start + begin, start + end, device=device).expand(rows, -1)

    done = 0
    while length - done > piece:
        model.get_decoder()(
            input_ids=input_ids[:, done : done + piece],
            position_ids=positions(done, done + piece),
            cache=cache,
            use_cache=True,
        )
        done += piece
    return model(
        input_ids=input_ids[:, done:],
        position_ids=positions(done, length),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
