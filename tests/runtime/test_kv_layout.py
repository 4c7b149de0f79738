"""KV layers append in place, and never write into tensors they were handed."""

import itertools
from typing import Any

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

from ctxproto.runtime import RadixKVCache
from ctxproto.runtime.kv_layout import KVStorePool, cache_from_spans, new_cache, row_kv_slice


def _decode(lm: Any, cache: Any, ids: Any, steps: int) -> tuple[list[int], Any, list[int]]:
    """Prefill ``ids`` after the cache's tokens, then greedy-decode ``steps`` tokens."""
    start = cache.get_seq_length()
    positions = torch.arange(start, start + ids.shape[1]).unsqueeze(0)
    out = lm(input_ids=ids, position_ids=positions, cache=cache, use_cache=True)
    tokens, pointers = [], []
    for _ in range(steps):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
        position = torch.tensor([[cache.get_seq_length()]])
        out = lm(input_ids=token, position_ids=position, cache=cache, use_cache=True)
        pointers.append(cache.layers[0].keys.data_ptr())
    return tokens, out.logits[:, -1], pointers


@pytest.mark.models
def test_appends_in_place_with_the_same_numbers_as_dynamic_cache(lm):
    ids = torch.randint(100, 40_000, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference, reference_logits, _ = _decode(lm, transformers.DynamicCache(), ids, 8)
        tokens, logits, pointers = _decode(lm, new_cache(), ids, 8)
    assert tokens == reference
    torch.testing.assert_close(logits, reference_logits, rtol=0, atol=1e-5)
    assert len(set(pointers)) == 1  # every step wrote into the same store


def test_room_for_a_prompt_fed_in_pieces_is_allocated_once():
    """Without ``room`` a layer grows 256 tokens past its length and copies its KV
    again each time; with it, pieces of a 1,200-token prompt fill one store."""
    stores = {}
    for room in (0, 1200):
        cache = new_cache(room=room)
        pointers = []
        for _ in range(20):
            piece = torch.randn(1, 3, 60, 64)
            cache.update(piece, piece, 0)
            pointers.append(cache.layers[0].keys.data_ptr())
        assert cache.get_seq_length() == 1200
        stores[room] = 1 + sum(a != b for a, b in itertools.pairwise(pointers))
    assert stores == {0: 4, 1200: 1}


@pytest.mark.models
def test_a_prefix_hit_resumes_with_the_tokens_of_a_full_prefill(lm):
    ids = torch.randint(100, 40_000, (1, 48), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        first = new_cache()
        lm(input_ids=ids[:, :32], cache=first, use_cache=True)
        kv = row_kv_slice(first, 0, 0)
        spans = [kv(0, 20), kv(20, 32)]  # two radix nodes on one path
        kept = [span.clone() for span in spans]
        resumed = cache_from_spans(spans, device="cpu", append=16)
        store = resumed.layers[0].keys.data_ptr()
        tokens, logits, pointers = _decode(lm, resumed, ids[:, 32:], 4)
        full_tokens, full_logits, _ = _decode(lm, new_cache(), ids, 4)
    assert all(torch.equal(span, copy) for span, copy in zip(spans, kept, strict=True))
    assert tokens == full_tokens
    torch.testing.assert_close(logits, full_logits, rtol=0, atol=1e-4)
    assert set(pointers) == {store}  # the suffix and every step went into the first store


class CopiedBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch leaves it untyped
    """Counts the bytes that tensor copies (copy_, cat, stack, clone, to) write."""

    COPIES = frozenset({"copy_", "cat", "stack", "clone", "_to_copy", "index_put_"})

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in self.COPIES:
            written = args[0] if name.endswith("_") else out
            self.bytes += written.numel() * written.element_size()
        return out


def test_a_prefix_hit_copies_the_prefix_kv_once():
    layers, heads, dim = 3, 2, 4
    radix = RadixKVCache(1 << 24)
    prompt = list(range(40))
    full = torch.randn(layers, 2, heads, len(prompt), dim)
    radix.insert(prompt[:24], lambda start, end: full[..., start:end, :])
    radix.insert(prompt, lambda start, end: full[..., start:end, :])
    suffix = torch.randn(layers, 2, 1, heads, 5, dim)
    with CopiedBytes() as copied:
        match = radix.match_prefix(prompt)
        past = cache_from_spans(match.spans, device="cpu", append=5)
        for layer, new in zip(past.layers, suffix, strict=True):
            layer.update(new[0], new[1])  # the prefill of the rest of the prompt
    assert len(match.spans) == 2
    prefix_bytes = full.numel() * full.element_size()
    assert copied.bytes == prefix_bytes + suffix.numel() * suffix.element_size()
    keys = torch.stack([layer.keys[0] for layer in past.layers])
    torch.testing.assert_close(keys, torch.cat([full[:, 0], suffix[:, 0, 0]], dim=2))
    assert torch.equal(torch.cat(match.spans, dim=3), full)  # the tree's spans are intact


def _spans(length: int) -> list[Any]:
    return [torch.randn(3, 2, 2, length, 4)]


def test_the_pool_lends_a_store_again_only_once_no_cache_holds_it():
    pool = KVStorePool()
    first = cache_from_spans(_spans(40), device="cpu", append=5, pool=pool)
    held = first.layers[0].keys
    kept = held.clone()
    second = cache_from_spans(_spans(40), device="cpu", append=5, pool=pool)
    # The first cache is alive: the second gets memory of its own, the first is intact.
    assert second.layers[0].keys.data_ptr() != held.data_ptr()
    assert torch.equal(held, kept)
    address = held.data_ptr()
    del first, held, second
    shorter = cache_from_spans(_spans(30), device="cpu", append=5, pool=pool)
    assert shorter.layers[0].keys.data_ptr() == address  # reused, no new pages
    assert shorter.get_seq_length() == 30
    del shorter
    # Longer than the pooled store and its headroom: a new store, pooled in its place.
    longer = cache_from_spans(_spans(400), device="cpu", append=5, pool=pool)
    address = longer.layers[0].keys.data_ptr()
    del longer
    again = cache_from_spans(_spans(400), device="cpu", append=5, pool=pool)
    assert again.layers[0].keys.data_ptr() == address
