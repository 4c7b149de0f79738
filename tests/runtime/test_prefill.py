"""A prefill fed in pieces the fused layers take whole (``runtime/prefill.py``): no
piece through a wrapped layer, the cache holding every token, the logits and KV of
one whole forward within float tolerance; one forward where nothing is fused or a
piece would be a few tokens."""

from typing import Any

import torch

from ctxproto.models.fused_decoder import fused_rows
from ctxproto.models.packed_linear import PACKED_ROWS, packed_rows
from ctxproto.runtime.kv_layout import new_cache
from ctxproto.runtime.prefill import prefill
from tests.conftest import needs_avx512, needs_kernel_cpu, record_unfused_rows

pytestmark = needs_kernel_cpu


def tokens(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(100, 40000, (rows, length), generator=torch.Generator().manual_seed(seed))


def fed(model: Any, ids: torch.Tensor, cached: int) -> tuple[torch.Tensor, Any]:
    """The last logits and the cache after ``ids[:, :cached]``, then the rest."""
    cache = new_cache(room=ids.shape[1])
    with torch.inference_mode():
        if cached:
            prefill(model, ids[:, :cached], cache)
        out = prefill(model, ids[:, cached:], cache, start=cached)
    return out.logits, cache


def assert_alike(pieces: tuple[torch.Tensor, Any], whole: tuple[torch.Tensor, Any]) -> None:
    (logits, cache), (want_logits, want_cache) = pieces, whole
    assert logits.shape == want_logits.shape and logits.shape[1] == 1
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=1e-3)
    assert torch.equal(logits.argmax(-1), want_logits.argmax(-1))
    for mine, theirs in zip(cache.layers, want_cache.layers, strict=True):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=0, atol=1e-3)
        torch.testing.assert_close(mine.values, theirs.values, rtol=0, atol=1e-3)


def test_only_the_engines_cpu_copy_is_fed_in_pieces(lm, fused, unfused):
    assert fused_rows(fused) == packed_rows()
    assert fused_rows(unfused) is None and fused_rows(lm) is None


@needs_avx512  # with AVX2 a prefill is one forward through torch's kernels
def test_after_a_cached_prefix_every_piece_runs_fused(fused, unfused, monkeypatch):
    """Batch 1 after cached KV: the pieces attend on the kernel under the causal mask
    aligned to the end of the KV, the reference in one forward of the wrapped layers."""
    ids = tokens(1, 100 + 3 * PACKED_ROWS + 5, seed=5)
    pieces_rows = record_unfused_rows(fused, monkeypatch)
    whole_rows = record_unfused_rows(unfused, monkeypatch)
    pieces, whole = fed(fused, ids, cached=100), fed(unfused, ids, cached=100)
    assert pieces_rows == [] and whole_rows == [100, 3 * PACKED_ROWS + 5]
    assert pieces[1].get_seq_length() == whole[1].get_seq_length() == ids.shape[1]
    assert_alike(pieces, whole)


@needs_avx512
def test_a_batch_is_cut_by_tokens_per_row(fused, unfused, monkeypatch):
    """Two rows: pieces of ``PACKED_ROWS // 2`` tokens each, cold."""
    ids = tokens(2, 3 * PACKED_ROWS + 5, seed=6)
    pieces_rows = record_unfused_rows(fused, monkeypatch)
    pieces, whole = fed(fused, ids, cached=0), fed(unfused, ids, cached=0)
    assert pieces_rows == []
    assert_alike(pieces, whole)


def test_many_rows_are_fed_whole(fused, monkeypatch):
    """Eight rows would make pieces of 8 tokens: one forward instead."""
    rows = record_unfused_rows(fused, monkeypatch)
    fed(fused, tokens(8, 40, seed=7), cached=0)
    assert rows == [40]
