"""Moving KV between the model's cache object and the radix cache's span tensors.

The model reads and grows a transformers ``DynamicCache`` (one ``[batch, kv_heads,
seq, head_dim]`` key and value tensor per layer); the radix cache stores spans as
one ``[layers, 2, kv_heads, span, head_dim]`` tensor. Conversions live here once.

transformers' ``DynamicLayer`` appends a decoded token with ``torch.cat``, copying the
whole KV of the layer on every step: at a 1.8k-token context that is 83 MB per step
for SmolLM2-135M, a third of a CPU decode step. Our layers keep spare room after the
last token and write new tokens into it, so a step copies only the new token's KV
(one full copy per ``_RESERVE`` tokens). The arithmetic is unchanged: attention reads
the same values through a view.
"""

from __future__ import annotations

import functools
from typing import Any

from ctxproto._extras import require
from ctxproto.runtime.radix_cache import KVSlice

__all__ = ["cache_from_spans", "new_cache", "row_kv_slice"]

_RESERVE = 256
"""Tokens of spare room allocated past the current length when a layer's store grows."""


@functools.cache
def _reserved_layer() -> type[Any]:
    """The ``DynamicLayer`` subclass that appends in place (built on first use of the runtime)."""
    torch = require("torch", extra="runtime")
    dynamic_layer: Any = require("transformers.cache_utils", extra="runtime").DynamicLayer

    class ReservedLayer(dynamic_layer):  # type: ignore[misc]
        """``keys``/``values`` are views of a larger store that owns the spare room.

        Anything may assign ``keys``/``values`` directly (the batch does, to merge
        rows; a prefix hit does, with views of the radix cache's tensors). Such a
        tensor is not our store, so the next ``update`` copies it into a new store
        first: we only ever write into memory this layer allocated.
        """

        def __init__(self) -> None:
            super().__init__()
            self._key_store: Any = None
            self._value_store: Any = None

        def update(
            self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any
        ) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.get_seq_length()
            end = length + key_states.shape[-2]
            if not self._owns_room_for(key_states, end):
                self._grow(key_states, value_states, length, end)
            self._key_store[..., length:end, :] = key_states
            self._value_store[..., length:end, :] = value_states
            self.keys = self._key_store[..., :end, :]
            self.values = self._value_store[..., :end, :]
            return self.keys, self.values

        def crop(self, tokens_to_remove: int) -> None:
            """Crop, and give up the store: tensors returned earlier must keep their values."""
            super().crop(tokens_to_remove)
            self._key_store = self._value_store = None

        def _owns_room_for(self, key_states: Any, end: int) -> bool:
            store = self._key_store
            return bool(
                store is not None
                and self.keys.numel()
                and self.keys.data_ptr() == store.data_ptr()
                and self.values.data_ptr() == self._value_store.data_ptr()
                and self.keys.shape[:2] == store.shape[:2]
                and key_states.shape[0] == store.shape[0]
                and end <= store.shape[-2]
            )

        def _grow(self, key_states: Any, value_states: Any, length: int, end: int) -> None:
            batch, heads, _, dim = key_states.shape
            shape = (batch, heads, end + _RESERVE, dim)
            self._key_store = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
            self._value_store = torch.empty(
                shape, dtype=value_states.dtype, device=value_states.device
            )
            if length:
                self._key_store[..., :length, :] = self.keys
                self._value_store[..., :length, :] = self.values

    return ReservedLayer


def new_cache() -> Any:
    """An empty ``DynamicCache`` whose layers append in place."""
    transformers = require("transformers", extra="runtime")
    cache_object = transformers.DynamicCache()
    cache_object.layer_class_to_replicate = _reserved_layer()
    return cache_object


def cache_from_spans(spans: Any) -> Any:
    """A batch-1 cache viewing a ``[layers, 2, heads, seq, dim]`` tensor, no copy.

    The first ``update`` copies the view into the layer's own store, so the radix
    cache's tensors are never written.
    """
    layer_class = _reserved_layer()
    layers = []
    for layer_kv in spans.unbind(0):
        layer = layer_class()
        keys, values = layer_kv[0].unsqueeze(0), layer_kv[1].unsqueeze(0)
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        layers.append(layer)
    cache_object = new_cache()
    cache_object.layers = layers
    return cache_object


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
