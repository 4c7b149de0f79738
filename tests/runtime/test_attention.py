"""The engine's attention: a decode step's kernel agrees with torch's SDPA on every
shape it takes, does not depend on the thread count, and other shapes go to SDPA."""

import pytest
import torch

from ctxproto.models.kernels import load_kernels
from ctxproto.runtime import attention


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, scale=query.size(-1) ** -0.5, enable_gqa=True
    )
    return out.transpose(1, 2)


def kv_views(batch: int, heads: int, length: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value as the engine's KV layers hand them over: views with spare room."""
    store = torch.randn(2, batch, heads, length + 37, dim)
    return store[0, :, :, :length], store[1, :, :, :length]


@pytest.mark.parametrize(
    ("batch", "query_heads", "kv_heads", "length", "dim"),
    [
        (1, 9, 3, 1, 64),
        (1, 9, 3, 255, 64),
        (1, 9, 3, 257, 64),  # one token past a chunk
        (2, 9, 3, 1800, 64),
        (1, 4, 4, 300, 128),  # no grouping
        (1, 16, 2, 513, 128),
    ],
)
def test_decode_kernel_agrees_with_sdpa(batch, query_heads, kv_heads, length, dim):
    assert load_kernels()
    torch.manual_seed(length)
    query = torch.randn(batch, query_heads, 1, dim)
    key, value = kv_views(batch, kv_heads, length, dim)
    out = torch.ops.ctxproto.decode_attention(query, key, value, dim**-0.5)
    assert out.shape == (batch, 1, query_heads, dim)
    torch.testing.assert_close(out, sdpa(query, key, value), rtol=1e-5, atol=1e-6)


def test_decode_kernel_sums_in_one_order_whatever_the_threads():
    torch.manual_seed(0)
    query = torch.randn(1, 9, 1, 64)
    key, value = kv_views(1, 3, 1000, 64)
    threads = torch.get_num_threads()
    together = torch.ops.ctxproto.decode_attention(query, key, value, 0.125)
    torch.set_num_threads(1)
    try:
        alone = torch.ops.ctxproto.decode_attention(query, key, value, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together, alone)


def test_other_shapes_go_to_sdpa():
    query = torch.randn(1, 9, 1, 64)
    key, value = kv_views(1, 3, 40, 64)
    assert attention._decodes_alone(query, key, value, 0.0, {})
    several = torch.randn(1, 9, 2, 64)
    assert not attention._decodes_alone(several, key, value, 0.0, {})
    half = query.bfloat16()
    assert not attention._decodes_alone(half, key.bfloat16(), value.bfloat16(), 0.0, {})
    assert not attention._decodes_alone(query, key, value, 0.0, {"sliding_window": 16})
    assert not attention._decodes_alone(torch.randn(1, 9, 1, 80), *kv_views(1, 3, 40, 80), 0.0, {})
