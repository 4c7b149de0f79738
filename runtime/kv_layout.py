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
import math
from collections.abc import Sequence
from typing import Any

from ctxproto._extras import require
from ctxproto.runtime.radix_cache import SEQ_DIM, KVSlice

__all__ = ["KVStorePool", "cache_from_spans", "new_cache", "row_kv_slice"]

_RESERVE = 256
"""Tokens of spare room allocated past the current length when a layer's store grows."""


_HEADROOM = 4
"""A pooled store is allocated 1/_HEADROOM larger than asked, for longer prompts later."""


@functools.cache
def _reserved_layer() -> type[Any]:
    """The ``DynamicLayer`` subclass that appends in place (built on first use of the runtime)."""
    torch = require("torch", extra="runtime")
    dynamic_layer: Any = require("transformers.cache_utils", extra="runtime").DynamicLayer

    class ReservedLayer(dynamic_layer):  # type: ignore[misc]
        """``keys``/``values`` are views of a larger store that owns the spare room.

        Anything may assign ``keys``/``values`` directly (the batch does, to merge
        rows). Such a tensor is not our store, so the next ``update`` copies it into
        a new store first: we only ever write into memory allocated for this layer.
        """

        def __init__(self, room: int = 0) -> None:
            super().__init__()
            self._key_store: Any = None
            self._value_store: Any = None
            self._room = room

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

        def hold(self, key_store: Any, value_store: Any, length: int) -> None:
            """Start from stores that already hold ``length`` tokens, with room after them."""
            self.lazy_initialization(key_store, value_store)
            self._key_store, self._value_store = key_store, value_store
            self.keys = key_store[..., :length, :]
            self.values = value_store[..., :length, :]

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
            shape = (batch, heads, max(end, self._room) + _RESERVE, dim)
            self._key_store = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
            self._value_store = torch.empty(
                shape, dtype=value_states.dtype, device=value_states.device
            )
            if length:
                self._key_store[..., :length, :] = self.keys
                self._value_store[..., :length, :] = self.values

    return ReservedLayer


def new_cache(room: int = 0) -> Any:
    """An empty ``DynamicCache`` whose layers append in place.

    ``room``: tokens the layers are known to receive (a prompt prefilled in
    pieces): their first store holds that many, where growing ``_RESERVE``
    tokens at a time would copy the KV again every ``_RESERVE`` tokens.
    """
    transformers = require("transformers", extra="runtime")
    cache_object = transformers.DynamicCache()
    layer_class = _reserved_layer()
    cache_object.layer_class_to_replicate = lambda: layer_class(room)
    return cache_object


class KVStorePool:
    """Hands a prefix hit's store the memory of one that no cache holds any more.

    Why: a store is tens of megabytes (83 MB for a 1.8k-token prefix of
    SmolLM2-135M), past the size malloc serves from its heap, so each fresh one
    is new pages that the kernel maps and zeroes one fault at a time as the
    prefix is copied in: 20,000 faults, and the copy took 28 ms where the same
    copy into memory already mapped took 6 ms. A chat serves its turns one after
    another, so the store of the turn before is free by the time the next turn
    hits the cache; the pool keeps that one and reuses it.

    A pooled store is lent again only when torch counts no tensor but the pool's
    own on its memory, so a cache still alive (a request in the batch, a caller's
    view) is never written to; without that count (another torch) it never reuses.
    Only tensors count: code that kept a bare ``untyped_storage()`` of a store
    would not be seen, and nothing here does.
    """

    def __init__(self) -> None:
        self._base: Any = None

    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        """An uninitialized tensor of ``shape``: pooled memory when free and large enough."""
        torch = require("torch", extra="runtime")
        numel = math.prod(shape)
        base = self._base
        if base is not None and _unshared(torch, base):
            fits = base.numel() >= numel and base.dtype == dtype
            if fits and base.device == torch.device(device):
                return base[:numel].view(shape)
            self._base = base = None  # free but unfit: let it go
        if base is not None:  # the pooled store is in use: this one is not pooled
            return torch.empty(shape, dtype=dtype, device=device)
        # A chat's prompt grows turn by turn: room for the next few turns' growth.
        self._base = torch.empty(numel + numel // _HEADROOM, dtype=dtype, device=device)
        return self._base[:numel].view(shape)


@functools.cache
def _alone_count() -> int | None:
    """The storage use count torch reports for a tensor nothing else shares, if it can."""
    torch = require("torch", extra="runtime")
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    tensor = torch.empty(1)  # held: the count must not read a freed storage
    alone: int = count(tensor.untyped_storage()._cdata)
    return alone


def _unshared(torch: Any, tensor: Any) -> bool:
    alone = _alone_count()
    return alone is not None and bool(
        torch._C._storage_Use_Count(tensor.untyped_storage()._cdata) == alone
    )


def cache_from_spans(
    spans: Sequence[Any], *, device: Any, append: int, pool: KVStorePool | None = None
) -> Any:
    """A batch-1 cache holding the prefix KV ``spans`` (radix-cache node tensors
    ``[layers, 2, heads, span, dim]``, root first), with room for ``append`` more tokens.

    This is the one copy a prefix hit makes: one store for all layers is allocated at
    its final size and each span is copied into it once, straight from the node (a
    host span too, so it is not staged on the device first). The prefill of the rest
    of the prompt then writes into the spare room, so the radix cache's tensors are
    never written, never aliased, and not copied a second time. With ``pool`` the
    store may reuse memory of an earlier one that nothing holds any more.
    """
    torch = require("torch", extra="runtime")
    layers, _, heads, _, dim = spans[0].shape
    length = sum(span.size(SEQ_DIM) for span in spans)
    shape = (layers, 2, 1, heads, length + append + _RESERVE, dim)
    if pool is None:
        store = torch.empty(shape, dtype=spans[0].dtype, device=device)
    else:
        store = pool.empty(shape, spans[0].dtype, device)
    start = 0
    for span in spans:
        end = start + span.size(SEQ_DIM)
        store[:, :, 0, :, start:end].copy_(span)
        start = end
    cache_object = new_cache()
    cache_object.layers = []
    for layer_store in store.unbind(0):
        layer = _reserved_layer()()
        layer.hold(layer_store[0], layer_store[1], length)
        cache_object.layers.append(layer)
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
