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

A one-token decode step without a mask (one sequence decoding) goes to ctxproto's
own kernel (``ctxproto/models/csrc/decode_attention.cpp``) instead. torch's CPU
kernel split the work by head, leaving one of two cores idle over 3 KV heads, and
took 7.0 ms for the 30 layers at a 1.8k-token context; the kernel splits the KV
into chunks of 256 tokens, reads each key once for the 3 query heads that share
it, and took 2.7 ms (11.9 against 5.4 ms at 3.1k). It sums in another order than
SDPA (within 1e-5 of it in the tests), fixed by the chunking, not by the threads.
"""

from __future__ import annotations

import functools
from typing import Any

from ctxproto._extras import require
from ctxproto.models.kernels import load_kernels

__all__ = ["GQA_SDPA", "use_gqa_sdpa"]

GQA_SDPA = "ctxproto_gqa_sdpa"
"""The name this attention is registered under in transformers' attention interface."""


def use_gqa_sdpa(model: Any) -> None:
    """Switch ``model`` (an SDPA model the caller owns) to this attention."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
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
        if attention_mask is None and _decodes_alone(query, key, value, dropout, kwargs):
            scale = query.size(-1) ** -0.5 if scaling is None else scaling
            output = torch.ops.ctxproto.decode_attention(query.contiguous(), key, value, scale)
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


def _decodes_alone(
    query: Any, key: Any, value: Any, dropout: float, options: dict[str, Any]
) -> bool:
    """Whether ``csrc/decode_attention.cpp`` can run: one float32 query token on CPU,
    head dimension 64 or 128, at most 8 query heads per KV head, no dropout, window
    or soft cap, and the kernels built."""
    torch = require("torch", extra="runtime")
    heads, kv_heads = query.size(1), key.size(1)
    return bool(
        query.device.type == "cpu"
        and query.size(2) == 1
        and query.dtype == key.dtype == value.dtype == torch.float32
        and query.size(-1) in (64, 128)
        and heads % kv_heads == 0
        and heads // kv_heads <= 8
        and key.stride(-1) == value.stride(-1) == 1
        and not dropout
        and options.get("sliding_window") is None
        and options.get("softcap") is None
        and load_kernels()
    )
