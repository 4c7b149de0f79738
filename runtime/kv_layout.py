"""Moving KV between the model's ``DynamicCache`` and the radix cache's span tensors.

The model reads and grows a transformers ``DynamicCache`` (one ``[batch, kv_heads,
seq, head_dim]`` key and value tensor per layer); the radix cache stores spans as
one ``[layers, 2, kv_heads, span, head_dim]`` tensor. Conversions live here once.
"""

from __future__ import annotations

from typing import Any

from ctxproto._extras import require
from ctxproto.runtime.radix_cache import KVSlice

__all__ = ["cache_from_spans", "new_cache", "row_kv_slice"]


def new_cache() -> Any:
    transformers = require("transformers", extra="runtime")
    return transformers.DynamicCache()


def cache_from_spans(spans: Any) -> Any:
    """A batch-1 ``DynamicCache`` viewing a ``[layers, 2, heads, seq, dim]`` tensor, no copy."""
    cache_utils = require("transformers.cache_utils", extra="runtime")
    layers = []
    for layer_kv in spans.unbind(0):
        layer = cache_utils.DynamicLayer()
        keys, values = layer_kv[0].unsqueeze(0), layer_kv[1].unsqueeze(0)
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        layers.append(layer)
    cache = cache_utils.DynamicCache()
    cache.layers = layers
    return cache


def row_kv_slice(cache: Any, row: int, offset: int) -> KVSlice:
    """``kv(start, end)`` for one batch row whose token 0 sits at column ``offset``."""
    torch = require("torch", extra="runtime")

    def kv(start: int, end: int) -> Any:
        return torch.stack(
            [
                torch.stack(
                    (
                        layer.keys[row, :, offset + start : offset + end],
                        layer.values[row, :, offset + start : offset + end],
                    )
                )
                for layer in cache.layers
            ]
        )

    return kv
