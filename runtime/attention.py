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
"""

from __future__ import annotations

import functools
from typing import Any

from ctxproto._extras import require

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
