import random
import sys
from collections.abc import Callable

import pytest
import torch

from ctxproto.errors import ConfigError, UsageError
from ctxproto.runtime import RadixKVCache
from ctxproto.runtime.radix_cache import (
    EVICTIONS,
    Eviction,
    PrefixMatch,
    TreeNode,
    eviction_key,
)

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
    return [int(v) for v in torch.cat(match.spans, dim=3)[0, 0, 0, :, 0]]


def test_match_returns_longest_prefix_with_its_kv():
    cache = RadixKVCache(1 << 20)
    insert(cache, [1, 2, 3, 4])
    match = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert match.length == 4
    assert held_tokens(match) == [1, 2, 3, 4]
    assert cache.match_prefix([9, 1]).length == 0
    assert cache.match_prefix([9, 1]).spans == []


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


def test_reset_while_a_request_holds_a_span_is_refused():
    cache = RadixKVCache(1 << 20)
    node = insert(cache, [1, 2, 3])
    cache.lock(node)
    with pytest.raises(UsageError, match="requests hold cached spans"):
        cache.reset()
    cache.unlock(node)
    stats = cache.stats()
    assert stats.bytes_in_use == stats.evictable_bytes == 3 * TOKEN_BYTES
    cache.reset()
    stats = cache.stats()
    assert (stats.nodes, stats.bytes_in_use, stats.evictable_bytes) == (0, 0, 0)
    assert cache.match_length([1, 2, 3]) == 0


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


def test_a_namespace_costs_nothing_once_it_holds_no_span():
    """Clients choose namespaces (the proxy's ``cache_salt``): lookups in new ones plant
    no root, and a root goes with its last span once no request holds it."""
    cache = RadixKVCache(1 << 20)
    for salt in range(1000):
        namespace = f"tenant\x1fsalt-{salt}"
        assert cache.match_length([1, 2, 3], namespace) == 0
        match = cache.match_prefix([1, 2, 3], namespace)
        assert match.length == 0
        cache.lock(match.node)  # a request that found nothing, as the engine runs one
        cache.unlock(match.node)
    assert cache._roots == {}

    tokens = [1, 2, 3]
    first = cache.match_prefix(tokens, "tenant")  # outside the tree until the insert
    cache.lock(first.node)
    stored = cache.insert(tokens, kv_of(tokens), "tenant")
    cache.lock(stored)
    cache.unlock(first.node)
    assert cache.match_length(tokens, "tenant") == 3
    assert cache.evict(1 << 20) == 0  # held
    cache.unlock(stored)
    found_nothing = cache.match_prefix([9], "tenant")  # holds the root alone
    cache.lock(found_nothing.node)
    assert cache.evict(1 << 20) == 3 * TOKEN_BYTES
    assert cache.root("tenant") is not None
    cache.unlock(found_nothing.node)
    assert cache.root("tenant") is None
    stats = cache.stats()
    assert (stats.nodes, stats.bytes_in_use, stats.evictable_bytes) == (0, 0, 0)
    assert cache.match_length(tokens, "tenant") == 0


# ----- eviction without walking the tree --------------------------------------------------

Op = tuple[str, str, list[int]]


def walk(cache: RadixKVCache, namespaces: list[str]) -> list[TreeNode]:
    """Every node under the given namespaces' roots (test-only: the cache never walks)."""
    found: list[TreeNode] = []
    stack = [root for root in map(cache.root, namespaces) if root is not None]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.children.values())
    return found


class ScanningLeaves:
    """Reference victim choice: scan the whole tree for the leaf of a tier with the lowest
    eviction key, as the cache did before it kept its leaves in a heap."""

    def __init__(self, cache: RadixKVCache, namespaces: list[str], host: bool) -> None:
        self.cache, self.namespaces, self.host = cache, namespaces, host

    def file(self, node: TreeNode, evictable: bool) -> None:
        pass

    def touched(self, node: TreeNode) -> None:
        pass

    def pop(self) -> TreeNode | None:
        nodes = walk(self.cache, self.namespaces)
        if self.host:
            leaves = [n for n in nodes if n.on_host and not n.children and n.lock_ref == 0]
        else:
            leaves = [
                n
                for n in nodes
                if n.parent is not None
                and not n.on_host
                and n.lock_ref == 0
                and all(c.on_host for c in n.children.values())
            ]
        return min(leaves, key=eviction_key, default=None)


def random_ops(seed: int, count: int) -> list[Op]:
    """Inserts and lookups over shared prefixes (so nodes split), requests that hold
    their node for a while, and explicit evictions, in two namespaces."""
    rng = random.Random(seed)
    stems = [[rng.randrange(6) for _ in range(8)] for _ in range(4)]
    ops: list[Op] = []
    for _ in range(count):
        kind = rng.choice(["insert", "insert", "match", "match", "release", "evict"])
        stem = rng.choice(stems)
        tokens = stem[: rng.randrange(1, 9)] + [rng.randrange(6) for _ in range(rng.randrange(4))]
        ops.append((kind, rng.choice(["", "b"]), tokens))
    return ops


def apply(cache: RadixKVCache, held: list[TreeNode], op: Op) -> None:
    kind, namespace, tokens = op
    if kind == "insert":
        cache.insert(tokens, kv_of(tokens), namespace)
    elif kind == "match":
        match = cache.match_prefix(tokens, namespace)
        cache.lock(match.node)  # a request running on this prefix
        held.append(match.node)
    elif kind == "release" and held:
        cache.unlock(held.pop(len(tokens) % len(held)))
    elif kind == "evict":
        cache.evict(len(tokens) * TOKEN_BYTES)


Row = tuple[tuple[int, ...], bool, int, int]


def snapshot(cache: RadixKVCache) -> list[Row]:
    """Each node as (tokens from the root, on host, references, last access)."""
    rows: list[Row] = []
    for node in walk(cache, ["", "b"]):
        path: list[int] = []
        current: TreeNode | None = node
        while current is not None:
            path[:0] = current.key
            current = current.parent
        rows.append((tuple(path), node.on_host, node.lock_ref, node.last_access))
    return sorted(rows)


def small_cache(eviction: Eviction = "reuse") -> RadixKVCache:
    return RadixKVCache(24 * TOKEN_BYTES, offload_max_bytes=16 * TOKEN_BYTES, eviction=eviction)


@pytest.mark.parametrize("eviction", EVICTIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heap_eviction_picks_the_same_victims_as_a_full_scan(seed, eviction):
    cache, reference = small_cache(eviction), small_cache(eviction)
    reference._device_leaves = ScanningLeaves(reference, ["", "b"], host=False)  # type: ignore[assignment]
    reference._host_leaves = ScanningLeaves(reference, ["", "b"], host=True)  # type: ignore[assignment]
    held: list[TreeNode] = []
    reference_held: list[TreeNode] = []
    for op in random_ops(seed, 400):
        apply(cache, held, op)
        apply(reference, reference_held, op)
        assert snapshot(cache) == snapshot(reference), op
        assert cache.stats() == reference.stats()
    stats = cache.stats()
    assert stats.evictions > 20 and stats.offloads > 20  # both tiers were exercised


@pytest.mark.parametrize("seed", [3, 4])
def test_stats_counters_equal_a_full_walk(seed):
    cache = small_cache()
    held: list[TreeNode] = []
    for op in random_ops(seed, 400):
        apply(cache, held, op)
        nodes = [n for n in walk(cache, ["", "b"]) if n.parent is not None]
        device = [n for n in nodes if not n.on_host]
        stats = cache.stats()
        assert stats.nodes == len(nodes)
        assert stats.bytes_in_use == sum(n.nbytes for n in device)
        assert stats.host_bytes_in_use == sum(n.nbytes for n in nodes if n.on_host)
        assert stats.evictable_bytes == sum(n.nbytes for n in device if n.lock_ref == 0)
        for node in walk(cache, ["", "b"]):
            assert node.device_children == sum(not c.on_host for c in node.children.values())
    for node in held:
        cache.unlock(node)
    assert cache.stats().evictable_bytes == cache.stats().bytes_in_use


def calls_during(action: Callable[[], object]) -> int:
    """Python and C function calls made by ``action``: a count of the work done that does
    not depend on the machine's speed."""
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


def spans(count: int) -> list[list[int]]:
    """``count`` two-token spans that share no first token, so each is its own leaf."""
    return [[1000 + i, 7] for i in range(count)]


def evict_calls(leaves: int) -> int:
    cache = RadixKVCache(1 << 24)
    for tokens in spans(leaves):
        insert(cache, tokens)
        cache.match_prefix(tokens)  # a lookup between inserts, as requests do
    calls = calls_during(lambda: cache.evict(10 * 2 * TOKEN_BYTES))
    assert cache.stats().evictions == 10 and cache.stats().nodes == leaves - 10
    assert cache.match_length(spans(11)[9]) == 0 and cache.match_length(spans(11)[10]) == 2
    return calls


def test_evicting_k_leaves_does_not_depend_on_the_tree_size():
    assert evict_calls(1000) == evict_calls(100)


def offload_calls(host_spans: int) -> int:
    cache = RadixKVCache(2 * TOKEN_BYTES, offload_max_bytes=host_spans * 2 * TOKEN_BYTES)
    for tokens in spans(host_spans + 1):  # every insert pushes the previous span to the host
        insert(cache, tokens)
    assert cache.stats().host_bytes_in_use == host_spans * 2 * TOKEN_BYTES
    # The next insert offloads the device span and so drops the oldest host span.
    calls = calls_during(lambda: insert(cache, [5, 5]))
    assert cache.match_length(spans(1)[0]) == 0 and cache.match_length(spans(2)[1]) == 2
    assert cache.stats().evictions == 1
    return calls


def test_offloading_into_a_full_host_tier_does_not_depend_on_its_size():
    assert offload_calls(1000) == offload_calls(100)


def test_many_lookups_keep_the_lru_order_and_a_bounded_heap():
    """Every lookup of an evictable leaf pushes a heap entry; the stale ones must neither
    change the order nor pile up while nothing is evicted."""
    cache = RadixKVCache(1 << 20, eviction="lru")
    leaves = spans(10)
    for tokens in leaves:
        insert(cache, tokens)
    rng = random.Random(5)
    last_use = {i: i for i in range(10)}
    for step in range(10, 1000):
        chosen = rng.randrange(10)
        cache.match_prefix(leaves[chosen])
        last_use[chosen] = step
    assert len(cache._device_leaves._heap) <= 2 * 10 + 65  # rebuilt, not grown by 990
    evicted = []
    for _ in range(10):
        cache.evict(1)
        gone = [i for i in range(10) if i not in evicted and cache.match_length(leaves[i]) == 0]
        assert len(gone) == 1
        evicted += gone
    assert evicted == sorted(range(10), key=last_use.__getitem__)


# ----- which span makes room ----------------------------------------------------------------

SYSTEM = [1, 2, 3, 4]


def serve_turn(cache: RadixKVCache, history: list[int], new: list[int]) -> int:
    """One request as the engine makes it: look the prompt up, hold it while it runs,
    store it (``new`` stands for question and answer), release. Returns the prompt
    tokens computed."""
    prompt = history + new
    match = cache.match_prefix(prompt[:-1])
    cache.lock(match.node)
    stored = cache.insert(prompt, kv_of(prompt))
    cache.lock(stored)
    cache.unlock(match.node)
    cache.unlock(stored)
    return len(prompt) - match.length


def round_robin(eviction: Eviction, sessions: int, rounds: int) -> list[list[int]]:
    """``sessions`` conversations taking turns, four new tokens each per turn, under a cap
    that holds the shared system prompt and about five of the final histories."""
    cache = RadixKVCache((len(SYSTEM) + 5 * 4 * rounds) * TOKEN_BYTES, eviction=eviction)
    histories = [list(SYSTEM) for _ in range(sessions)]
    computed = []
    for turn in range(rounds):
        row = []
        for s in range(sessions):
            new = [100 * (s + 1) + turn, 7, 8, 9]
            row.append(serve_turn(cache, histories[s], new))
            histories[s] = histories[s] + new
        computed.append(row)
    return computed


def test_round_robin_under_lru_recomputes_every_history():
    """The failure the reuse order exists for: LRU evicts the history asked for next."""
    computed = round_robin("lru", sessions=8, rounds=12)
    last = computed[-1]
    assert all(c >= 4 * 11 for c in last)  # each turn computed (nearly) its whole history


def test_round_robin_under_reuse_recomputes_only_the_newest_turns():
    """Read histories outrank the spans just stored, so what goes is each conversation's
    newest turns, not its whole history."""
    lru, reuse = round_robin("lru", 8, 12), round_robin("reuse", 8, 12)
    assert max(reuse[-1]) < 0.6 * min(lru[-1]), reuse[-1]
    assert sum(map(sum, reuse)) < 0.6 * sum(map(sum, lru))


def take_turns(cache: RadixKVCache, histories: dict[str, list[int]], rounds: int) -> None:
    for _ in range(rounds):
        for name, history in histories.items():
            new = [ord(name), len(history), 7, 8]
            serve_turn(cache, history, new)
            histories[name] = history + new


def victims(cache: RadixKVCache, histories: dict[str, list[int]], count: int) -> list[str]:
    """Which conversation loses cached tokens at each of ``count`` one-span evictions."""
    lost = []
    for _ in range(count):
        before = {name: cache.match_length(h) for name, h in histories.items()}
        cache.evict(1)
        lost += [name for name, h in histories.items() if cache.match_length(h) < before[name]]
    return lost


def test_a_conversation_that_stops_coming_back_loses_its_head_start():
    """Conversations back every 4 requests: a read history outranks the spans stored in
    the 4 requests after its last use, and no longer."""
    caches = []
    for later_rounds in (0, 2):
        cache = RadixKVCache(1 << 20)
        histories = {name: list(SYSTEM) for name in "abcd"}
        take_turns(cache, histories, rounds=6)
        assert cache.head_start == 4
        others = {name: histories[name] for name in "bcd"}  # "a" stops coming back
        take_turns(cache, others, rounds=later_rounds)
        histories.update(others)
        caches.append((cache, histories))
    (soon, soon_histories), (late, late_histories) = caches
    # First "a"'s newest turn, which no request read: the oldest unread span either way.
    # Right after, "a"'s history still outranks the others' newest turns; 6 requests
    # later it does not.
    assert victims(soon, soon_histories, 2) == ["a", "b"]
    assert victims(late, late_histories, 2) == ["a", "a"]


def test_lru_eviction_has_no_head_start():
    cache = RadixKVCache(1 << 20, eviction="lru")
    history = list(SYSTEM)
    for turn in range(4):
        serve_turn(cache, history, [9, turn])
        history = [*history, 9, turn]
    assert cache.head_start == 0


def test_unknown_eviction_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        RadixKVCache(1 << 20, eviction="mru")  # type: ignore[arg-type]
    assert caught.value.key == "eviction"


def test_a_request_in_a_batch_never_counts_its_own_spans_as_read_again():
    """Requests overlap in a batch: a later request's lookup must not make the first
    one's own inserts count as a second reader."""
    cache = RadixKVCache(1 << 20)
    prompt_a, prompt_b = [*SYSTEM, 10, 11], [*SYSTEM, 20, 21]
    match_a = cache.match_prefix(prompt_a[:-1])
    cache.lock(match_a.node)
    stored_a = cache.insert(prompt_a, kv_of(prompt_a))  # a's prefill
    match_b = cache.match_prefix(prompt_b[:-1])  # b joins the batch
    cache.lock(match_b.node)
    answered = [*prompt_a, 12, 13]
    finished_a = cache.insert(answered, kv_of(answered))  # a finishes
    assert not stored_a.reused and not finished_a.reused
    cache.unlock(match_a.node)
    cache.unlock(match_b.node)
    again = cache.match_prefix(answered)  # a's conversation comes back
    assert again.node.reused and stored_a.reused


def test_engine_refuses_an_unknown_eviction_before_loading_a_model(monkeypatch):
    from ctxproto.runtime import engine

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(engine, "load_causal_lm", never)
    with pytest.raises(ConfigError) as caught:
        engine.Engine(eviction="mru")  # type: ignore[arg-type]
    assert caught.value.key == "eviction"
