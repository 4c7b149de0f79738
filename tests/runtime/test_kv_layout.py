"""KV layers append in place, and never write into tensors they were handed."""

from typing import Any

import pytest
import torch
import transformers

from ctxproto.runtime.kv_layout import cache_from_spans, new_cache, row_kv_slice

pytestmark = pytest.mark.models


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


def test_appends_in_place_with_the_same_numbers_as_dynamic_cache(lm):
    ids = torch.randint(100, 40_000, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference, reference_logits, _ = _decode(lm, transformers.DynamicCache(), ids, 8)
        tokens, logits, pointers = _decode(lm, new_cache(), ids, 8)
    assert tokens == reference
    torch.testing.assert_close(logits, reference_logits, rtol=0, atol=1e-5)
    assert len(set(pointers)) == 1  # every step wrote into the same store


def test_a_prefix_view_is_copied_before_it_grows(lm):
    ids = torch.randint(100, 40_000, (1, 48), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        first = new_cache()
        lm(input_ids=ids[:, :32], cache=first, use_cache=True)
        spans = row_kv_slice(first, 0, 0)(0, 32)  # what the radix cache would hold
        kept = spans.clone()
        resumed = cache_from_spans(spans)
        tokens, _, _ = _decode(lm, resumed, ids[:, 32:], 4)
        full_tokens, _, _ = _decode(lm, new_cache(), ids, 4)
    assert torch.equal(spans, kept)
    assert tokens == full_tokens
