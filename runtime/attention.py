"""SDPA attention whose grouped-query heads share their KV heads under a mask too.

SmolLM2 has 9 query heads over 3 KV heads. transformers' SDPA attention lets
``scaled_dot_product_attention`` share the KV heads (``enable_gqa``) only when no
mask is passed, since CUDA's fused kernels take no mask with it; with a mask it
first copies every KV head three times (``repeat_kv``). A one-token decode step
and a full prefill pass no mask, but a forward of several tokens after cached KV
needs one (its causal mask is aligned to the end of the cache): a verifying
forward of speculative decoding, or a prefill after a prefix-cache hit. On CPU
that copy was a fifth of a 5-token forward at a 3k-token context, and the
attention over 9 copied heads took three times as long as over 3 shared ones.

``scaled_dot_product_attention`` on CPU takes the mask and ``enable_gqa``
together, so on CPU this calls it that way; anywhere else it is transformers'
function unchanged. The engine selects it by name on its own copy of the model.

A one-token decode step without a mask, and up to ``kernel_tokens()`` new tokens of
one sequence under the causal mask aligned to the end of the KV (a verifying
forward, a short prefill after a prefix hit), go to ctxproto's own kernel
(``ctxproto/models/csrc/decode_attention.cpp``) instead. torch's CPU kernel split
a decode step by head, leaving one of two cores idle over 3 KV heads, and took
7.0 ms for the 30 layers at a 1.8k-token context; the kernel splits the KV into
chunks of 256 tokens, reads each key once per new token for the 3 query heads that
share it, and took 2.7 ms (11.9 against 5.4 ms at 3.1k). It sums in another order
than SDPA (within 1e-5 of it in the tests), fixed by the chunking, not by the
threads; a token's result is the same bits whatever tokens come after it. A
decode step of a batch of rows of different lengths, whose KV is left-padded
(``batch.py``), runs on it too: each row's chunks start at its first key, so a
row's result is the same bits as alone, where SDPA under the padding mask summed
in another order than the kernel a row alone ran on, and a mode that rounds the
layers' inputs (``int8_weights``) could then pick another token batched.
"""

from __future__ import annotations

import functools
from typing import Any

from ctxproto._extras import require
from ctxproto.models.kernels import kernel_lanes, load_kernels

__all__ = ["GQA_SDPA", "use_gqa_sdpa"]

GQA_SDPA = "ctxproto_gqa_sdpa"
"""The name this attention is registered under in transformers' attention interface."""


def use_gqa_sdpa(model: Any) -> None:
    """Switch ``model`` (an SDPA model the caller owns) to this attention."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    if model.device.type == "cpu":
        load_kernels()  # built now, not inside the first request
    _register()
    model.config._attn_implementation = GQA_SDPA


@functools.cache
def _register() -> None:
    torch = require("torch", extra="runtime")
    modeling: Any = require("transformers.modeling_utils", extra="runtime")
    masking: Any = require("transformers.masking_utils", extra="runtime")
    sdpa: Any = require("transformers.integrations.sdpa_attention", extra="runtime")

    def attention(
        module: Any,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[Any, None]:
        starts = _kernel_attends(query, key, value, attention_mask, dropout, kwargs)
        if starts is not None:
            scale = query.size(-1) ** -0.5 if scaling is None else scaling
            output = torch.ops.ctxproto.decode_attention(
                query.contiguous(), key, value, scale, starts
            )
            return output, None
        grouped = getattr(module, "num_key_value_groups", 1) > 1
        if attention_mask is None or not grouped or query.device.type != "cpu":
            return sdpa.sdpa_attention_forward(  # type: ignore[no-any-return]
                module, query, key, value, attention_mask, dropout, scaling, **kwargs
            )
        output = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True
        )
        return output.transpose(1, 2).contiguous(), None

    modeling.AttentionInterface.register(GQA_SDPA, attention)
    masking.AttentionMaskInterface.register(GQA_SDPA, masking.sdpa_mask)


KERNEL_TOKENS = 64
"""The most new tokens of one sequence the kernel attends for at once with AVX-512: a
decode step (1), a verifying forward of speculative decoding (up to 7), a short
prefill after a prefix-cache hit. Over 1.8k tokens of KV and 30 layers it took 3.8 ms
against SDPA's 12.9 for 2 tokens, 10.3 against 19.2 for 8, 69.9 against 87.8 for 64."""

KERNEL_TOKENS_AVX2 = 8
"""The same with AVX2, as many as the packed products take there (``PACKED_ROWS_AVX2``):
at 64 tokens the kernel took 112 ms against SDPA's 91 on an AMD EPYC (Zen 3)."""


def kernel_tokens() -> int:
    """The most new tokens the kernel attends for at once on this CPU."""
    return KERNEL_TOKENS if kernel_lanes() >= 16 else KERNEL_TOKENS_AVX2


_OPTIONS_IT_IGNORES = ("sliding_window", "softcap", "position_bias", "s_aux")


def _kernel_attends(
    query: Any, key: Any, value: Any, mask: Any, dropout: float, options: dict[str, Any]
) -> list[int] | None:
    """Each row's first visible key where ``csrc/decode_attention.cpp`` computes this
    attention, else None: float32 on CPU, head dimension 64 or 128, at most 8 query
    heads per KV head, nothing it ignores (dropout, a window, a soft cap, a position
    bias, sinks), and either one token a row with no mask or the left padding of a
    batch, or a few tokens of one sequence under the causal mask aligned to the end
    of the KV; and the kernels built."""
    torch = require("torch", extra="runtime")
    tokens, length = query.size(2), key.size(2)
    heads, kv_heads = query.size(1), key.size(1)
    if query.device.type != "cpu" or not 1 <= tokens <= min(kernel_tokens(), length):
        return None
    fits = bool(
        query.dtype == key.dtype == value.dtype == torch.float32
        and query.size(-1) in (64, 128)
        and key.shape == value.shape
        and key.size(0) == query.size(0)
        and heads % kv_heads == 0
        and heads // kv_heads <= 8
        and key.stride(-1) == value.stride(-1) == 1
        and not dropout
        and all(options.get(name) is None for name in _OPTIONS_IT_IGNORES)
        and load_kernels()
    )
    if not fits or (tokens > 1 and (mask is None or query.size(0) != 1)):
        return None  # several tokens with no mask are causal from the start of the KV
    if mask is None:
        return [0] * query.size(0)
    return _visible_from(torch, mask, query.size(0), tokens, length)


_last_checked: tuple[Any, ...] = (None, None, 0, 0, 0, None)
"""The last mask checked, what it was checked for, and the answer: every layer of a
forward gets the same mask. Holding it keeps its identity from being reused."""


def _visible_from(torch: Any, mask: Any, rows: int, tokens: int, length: int) -> list[int] | None:
    """The first key each row sees, where ``mask`` lets new token ``i`` of row ``b`` see
    exactly keys ``start[b] .. length - tokens + i``: the causal mask aligned to the end
    of the KV, after the left padding of a batch of rows of different lengths (the
    padding mask of ``runtime/batch.py``); else None."""
    global _last_checked
    # Inference tensors keep no version (and cannot change outside inference mode).
    version = None if mask.is_inference() else mask._version
    question = (mask, version, rows, tokens, length)
    last = _last_checked
    if last[0] is mask and last[1:5] == question[1:]:
        return last[5]  # type: ignore[no-any-return]
    starts = None
    if mask.dtype == torch.bool and tuple(mask.shape) == (rows, 1, tokens, length):
        first = length - mask[:, 0, -1].sum(-1)  # the last token sees its row's whole KV
        positions = torch.arange(length, device=mask.device)
        last_seen = torch.arange(length - tokens, length, device=mask.device).unsqueeze(1)
        seen = (positions >= first.view(-1, 1, 1)) & (positions <= last_seen)
        if torch.equal(mask[:, 0], seen) and int(first.max()) <= length - tokens:
            starts = [int(start) for start in first.tolist()]
    _last_checked = (*question, starts)
    return starts
