from collections.abc import Callable

import pytest
import torch

from ctxproto.errors import ConfigError, UsageError
from ctxproto.runtime import RadixKVCache
from ctxproto.runtime.radix_cache import PrefixMatch, TreeNode

LAYERS, HEADS, DIM = 2, 1, 2
TOKEN_BYTES = LAYERS * 2 * HEADS * DIM * 4  # float32


def kv_of(tokens: list[int]) -> Callable[[int, int], torch.Tensor]:
    """KV whose every entry is the token id: a span's values show which tokens it holds."""

    def kv(start: int, end: int) -> torch.Tensor:
        values = torch.tensor(tokens[start:end], dtype=torch.float32)
        return values.view(1, 1, 1, -1, 1).expand(LAYERS, 2, HEADS, -1, DIM).clone()

    return kv


def insert(cache: RadixKVCache, tokens: list[int]) -> TreeNode:
    return cache.insert(tokens, kv_of(tokens))


def held_tokens(match: PrefixMatch) -> list[int]:
    return [int(v) for v in match.kv[0, 0, 0, :, 0]]


def test_match_returns_longest_prefix_with_its_kv():
    cache = RadixKVCache(1 << 20)
    insert(cache, [1, 2, 3, 4])
    match = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert match.length == 4
    assert held_tokens(match) == [1, 2, 3, 4]
    assert cache.match_prefix([9, 1]).length == 0
    assert cache.match_prefix([9, 1]).kv is None


def test_partial_match_splits_the_node_and_keeps_both_halves():
    cache = RadixKVCache(1 << 20)
    insert(cache, [1, 2, 3, 4])
    assert cache.stats().nodes == 1
    match = cache.match_prefix([1, 2, 7])
    assert match.length == 2
    assert held_tokens(match) == [1, 2]
    assert cache.stats().nodes == 2  # [1, 2] -> [3, 4]
    assert held_tokens(cache.match_prefix([1, 2, 3, 4])) == [1, 2, 3, 4]
    assert cache.stats().bytes_in_use == 4 * TOKEN_BYTES


def test_insert_stores_only_the_new_suffix_as_a_branch():
    cache = RadixKVCache(1 << 20)
    insert(cache, [1, 2, 3, 4])
    insert(cache, [1, 2, 8, 9, 10])
    assert cache.stats().nodes == 3
    assert cache.stats().bytes_in_use == 7 * TOKEN_BYTES
    assert held_tokens(cache.match_prefix([1, 2, 8, 9, 10, 11])) == [1, 2, 8, 9, 10]
    assert held_tokens(cache.match_prefix([1, 2, 3, 4])) == [1, 2, 3, 4]


def test_match_length_does_not_change_the_tree():
    cache = RadixKVCache(1 << 20)
    insert(cache, [1, 2, 3, 4])
    assert cache.match_length([1, 2, 9]) == 2
    assert cache.stats().nodes == 1


def test_memory_cap_is_never_exceeded_lru_leaf_goes_first():
    cache = RadixKVCache(6 * TOKEN_BYTES)
    insert(cache, [1, 2, 3])
    insert(cache, [4, 5, 6])
    cache.match_prefix([1, 2, 3])  # [1, 2, 3] is now the most recently used
    insert(cache, [7, 8])
    stats = cache.stats()
    assert stats.bytes_in_use <= 6 * TOKEN_BYTES
    assert stats.evictions == 1
    assert cache.match_length([4, 5, 6]) == 0
    assert cache.match_length([1, 2, 3]) == 3
    assert cache.match_length([7, 8]) == 2


def test_referenced_nodes_are_never_evicted_and_new_span_is_truncated():
    cache = RadixKVCache(5 * TOKEN_BYTES)
    node = insert(cache, [1, 2, 3, 4])
    cache.lock(node)
    tail = insert(cache, [9, 9, 9])  # only one token of room is left
    assert cache.match_length([1, 2, 3, 4]) == 4
    assert tail.key == [9]
    assert cache.stats().bytes_in_use == 5 * TOKEN_BYTES
    cache.unlock(node)
    insert(cache, [5, 6, 7, 8])
    assert cache.match_length([1, 2, 3, 4]) == 0
    assert cache.stats().bytes_in_use <= 5 * TOKEN_BYTES


def test_interior_nodes_are_evicted_only_after_their_children():
    cache = RadixKVCache(1 << 20)
    insert(cache, [1, 2, 3, 4])
    insert(cache, [1, 2, 5, 6])
    freed = cache.evict(2 * TOKEN_BYTES)
    assert freed == 2 * TOKEN_BYTES  # one leaf, never the shared [1, 2]
    assert cache.match_length([1, 2]) == 2


def test_unlock_below_zero_is_an_error():
    cache = RadixKVCache(1 << 20)
    node = insert(cache, [1, 2])
    with pytest.raises(UsageError, match="without a matching lock"):
        cache.unlock(node)


def test_offload_keeps_evicted_spans_reachable_from_host():
    cache = RadixKVCache(4 * TOKEN_BYTES, offload_max_bytes=6 * TOKEN_BYTES)
    insert(cache, [1, 2, 3])
    insert(cache, [4, 5, 6])  # [1, 2, 3] moves to the host tier
    stats = cache.stats()
    assert stats.offloads == 1 and stats.evictions == 0
    assert stats.bytes_in_use == 3 * TOKEN_BYTES
    assert stats.host_bytes_in_use == 3 * TOKEN_BYTES
    match = cache.match_prefix([1, 2, 3])  # comes back; [4, 5, 6] goes to the host
    assert held_tokens(match) == [1, 2, 3]
    stats = cache.stats()
    assert stats.bytes_in_use <= 4 * TOKEN_BYTES
    assert stats.host_bytes_in_use == 3 * TOKEN_BYTES
    assert stats.offloads == 2
    assert cache.match_length([4, 5, 6]) == 3


def test_offload_tier_full_drops_the_lru_span():
    cache = RadixKVCache(3 * TOKEN_BYTES, offload_max_bytes=3 * TOKEN_BYTES)
    for start in (10, 20, 30):
        insert(cache, [start, start + 1, start + 2])
    stats = cache.stats()
    assert stats.bytes_in_use <= 3 * TOKEN_BYTES and stats.host_bytes_in_use <= 3 * TOKEN_BYTES
    assert stats.evictions == 1
    assert cache.match_length([10, 11, 12]) == 0
    assert cache.match_length([20, 21, 22]) == 3


def test_stats_hit_rate():
    cache = RadixKVCache(1 << 20)
    cache.count_request(cached=0, computed=10)
    cache.count_request(cached=30, computed=10)
    assert cache.stats().hit_rate == pytest.approx(0.6)


def test_negative_cap_is_a_config_error():
    with pytest.raises(ConfigError):
        RadixKVCache(-1)


def test_namespaces_never_share_prefixes():
    cache = RadixKVCache(1 << 20)
    cache.insert([1, 2, 3], kv_of([1, 2, 3]), namespace="tenant-a")
    assert cache.match_length([1, 2, 3], namespace="tenant-a") == 3
    assert cache.match_length([1, 2, 3], namespace="tenant-b") == 0
    assert cache.match_prefix([1, 2, 3]).length == 0
    assert cache.stats().nodes == 1
