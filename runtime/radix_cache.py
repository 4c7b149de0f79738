"""A radix tree over token ids whose nodes hold the KV tensors of their token spans.

The design follows SGLang's RadixAttention (``python/sglang/srt/mem_cache/radix_cache.py``,
Zheng et al. 2024, "SGLang: Efficient Execution of Structured Language Model
Programs"): each edge is a span of tokens; a lookup that ends inside a span splits
the node there; in-flight requests hold reference counts on the path they use, and
memory is reclaimed by evicting the least recently used unreferenced leaves.

Differences that suit a transformers engine: a node owns one tensor
``[layers, 2 (key/value), kv_heads, span, head_dim]`` instead of indices into a
paged pool; the byte cap is enforced on insert — a span that does not fit after
eviction is truncated, so the cap is never exceeded; with ``offload_max_bytes`` a
node evicted from the device moves to host memory first (SGLang's HiCache idea) and
is brought back when a lookup reaches it; and the victim is not always the least
recently used leaf: a conversation that keeps coming back keeps its history ahead of
one that does not (``eviction="reuse"``, the default; see ``RadixKVCache``).

Eviction never walks the tree. As in SGLang, the nodes that may be evicted now
(unreferenced leaves of each tier) are kept in a set updated wherever a reference
count, a residency or a child changes, and victims come off a heap keyed by rank,
then last access, whose stale entries are skipped when they reach the top (lazy deletion):
evicting ``k`` spans from a tree of ``n`` nodes costs O(k log n), and ``stats()``
reads counters kept up to date the same way.

Each ``namespace`` (a tenant, say) has its own tree: requests never share KV
across namespaces, so the time to first token cannot reveal whether another
tenant sent the same prefix (the prompt-leakage channel that vLLM's ``cache_salt``
closes). All namespaces share one byte cap and one eviction order. Clients choose
namespaces (the proxy narrows a tenant's by the request's ``cache_salt``), so a
namespace costs nothing while it holds no span: a lookup never plants a root, and a
root goes once its last span is evicted and no request holds it.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel

from ctxproto.errors import ConfigError, UsageError

__all__ = [
    "CacheStats",
    "Eviction",
    "PrefixMatch",
    "RadixKVCache",
    "TreeNode",
    "common_prefix_length",
]

Eviction = Literal["reuse", "lru"]
EVICTIONS: tuple[Eviction, ...] = get_args(Eviction)

REUSE_SAMPLES = 256
"""How many of the latest reuse intervals (one per request that read a conversation's
tip again) the head start is taken from."""
REUSE_QUANTILE = 0.9
"""The head start is this quantile of those intervals (the sample at 90% of the way
from the shortest to the longest)."""

SEQ_DIM = 3
"""Token axis of a node tensor ``[layers, 2, kv_heads, span, head_dim]``."""

KVSlice = Callable[[int, int], Any]
"""``kv(start, end)`` returns the node tensor of prompt positions ``start:end``."""


@dataclass(eq=False)
class TreeNode:
    """One span of tokens and its KV; the root has an empty span."""

    key: list[int]
    value: Any = None
    parent: TreeNode | None = None
    children: dict[int, TreeNode] = field(default_factory=dict)
    lock_ref: int = 0
    on_host: bool = False
    last_access: int = 0
    """The cache's access count when a lookup last passed here: a count, not a clock,
    so two accesses never tie and the LRU order does not depend on timer resolution."""
    last_request: int = 0
    """The request count when a lookup last passed here."""
    reused: bool = False
    """A request's first lookup has read this span: one after the request that stored
    it, since a request looks its prompt up before it stores anything."""
    rank: int = 0
    """Eviction order, lowest first: ``last_request``, plus the head start if reused."""
    device_children: int = 0
    """Children on the device; a device node with none is a leaf of the device tier."""
    namespace: str = ""
    """On a root, the namespace whose tree it roots (to forget the root once it is empty)."""

    @property
    def nbytes(self) -> int:
        return 0 if self.value is None else int(self.value.numel() * self.value.element_size())


@dataclass
class PrefixMatch:
    """The longest cached prefix of a token sequence."""

    length: int
    node: TreeNode
    """The deepest matched node: lock it while the request runs."""
    spans: list[Any] = field(default_factory=list)
    """The KV of the matched nodes, root first: the tree's own tensors, not copies
    (copy them before writing; a span the device had no room for is on the host)."""


class CacheStats(BaseModel):
    """Counters of a prefix cache; ``hit_rate`` is cached / (cached + computed) prompt tokens."""

    cached_tokens: int
    computed_tokens: int
    hit_rate: float
    evictions: int
    offloads: int
    bytes_in_use: int
    host_bytes_in_use: int
    evictable_bytes: int
    """Device bytes no running request references: what eviction could free now."""
    max_bytes: int
    nodes: int


def eviction_key(node: TreeNode) -> tuple[int, int]:
    """Where ``node`` stands in the eviction order: lowest goes first."""
    return node.rank, node.last_access


class _LeafQueue:
    """The evictable leaves of one tier, lowest ``eviction_key`` first.

    A set holds the nodes evictable now; a heap of ``(key, push order, node)``
    orders them. An entry goes stale when its node leaves the set or is accessed
    again (a fresh entry is pushed then); stale entries are dropped when they reach
    the top, so every change costs O(log n) and no eviction scans the tree.
    """

    def __init__(self) -> None:
        self._members: set[TreeNode] = set()
        self._heap: list[tuple[tuple[int, int], int, TreeNode]] = []
        self._order = itertools.count()

    def file(self, node: TreeNode, evictable: bool) -> None:
        """Record whether ``node`` is evictable now."""
        if not evictable:
            self._members.discard(node)
        elif node not in self._members:
            self._members.add(node)
            self._push(node)

    def touched(self, node: TreeNode) -> None:
        """``node``'s eviction key changed: its old heap entry is stale now."""
        if node in self._members:
            self._push(node)

    def pop(self) -> TreeNode | None:
        """Remove and return the evictable node to evict first, if any."""
        while self._heap:
            key, _, node = heapq.heappop(self._heap)
            if node in self._members and eviction_key(node) == key:
                self._members.discard(node)
                return node
        return None

    def _push(self, node: TreeNode) -> None:
        if len(self._heap) > 2 * len(self._members) + 64:  # mostly stale: rebuild, amortized O(1)
            self._heap = [(eviction_key(n), next(self._order), n) for n in self._members]
            heapq.heapify(self._heap)
            return  # the rebuild holds node's current entry
        heapq.heappush(self._heap, (eviction_key(node), next(self._order), node))


class RadixKVCache:
    """Prefix-KV store shared by all requests of one engine (not thread-safe: one scheduler).

    ``eviction="lru"`` evicts the least recently used unreferenced leaf, as SGLang
    and vLLM do. When conversations take turns (many sessions served round robin,
    each back after the others), LRU evicts exactly the history asked for next, and
    once the histories outgrow the cap every turn recomputes its whole history.

    ``eviction="reuse"`` (the default) ranks a span that a later request has read
    again ahead of one that no request has: its rank is its last use plus a head
    start, the interval within which 90% of the latest 256 returns of a
    conversation came (counted in requests). Under round robin the sessions keep
    their histories and lose their newest, unread turns first. A conversation
    that stops coming back loses its head start after that long and goes like any
    other span; until a span has been read again the order is LRU's. Only returns
    to a conversation the cache still held part of are sampled, so the head start
    stays within how long the cache keeps one. Each request starts with one ``match_prefix``:
    that is what counts requests and marks spans read again. The count and the
    head start are shared by all namespaces, as the byte cap is.
    """

    def __init__(
        self,
        max_bytes: int,
        *,
        offload_max_bytes: int = 0,
        device: Any = "cpu",
        eviction: Eviction = "reuse",
    ) -> None:
        if max_bytes < 0 or offload_max_bytes < 0:
            raise ConfigError("cache sizes must be >= 0 bytes", key="max_bytes")
        if eviction not in EVICTIONS:
            raise ConfigError(f"must be one of {', '.join(EVICTIONS)}", key="eviction")
        self.eviction = eviction
        self.max_bytes = max_bytes
        self.offload_max_bytes = offload_max_bytes
        self.device = device
        self._clear()

    def reset(self) -> None:
        """Drop every span and zero the counters (a benchmark's cold start, say).

        Refused while a request holds a span: its unlock would walk a tree that is gone
        and count its bytes off the new one's.
        """
        if any(root.lock_ref > 1 for root in self._roots.values()):
            raise UsageError("cannot reset the prefix cache while requests hold cached spans")
        self._clear()

    def _clear(self) -> None:
        self._roots: dict[str, TreeNode] = {}
        self._device_leaves = _LeafQueue()
        """Device nodes with no device child and no reference: offloaded or dropped first."""
        self._host_leaves = _LeafQueue()
        """Host nodes with no child and no reference: dropped when the host tier is full."""
        self._accesses = 0
        self._requests = 0
        self._reuse_intervals: deque[int] = deque(maxlen=REUSE_SAMPLES)
        self.head_start = 0
        """Requests a span read again ranks ahead of its last use (0 under ``lru``)."""
        self.node_count = 0
        self.device_bytes = 0
        self.host_bytes = 0
        self.evictable_bytes = 0
        self.evictions = 0
        self.offloads = 0
        self.cached_tokens = 0
        self.computed_tokens = 0

    def root(self, namespace: str = "") -> TreeNode | None:
        """The (empty-span, always referenced) root of ``namespace``'s tree; ``None`` while
        the namespace holds no span and no request holds its root."""
        return self._roots.get(namespace)

    def _root_or_new(self, namespace: str) -> TreeNode:
        """``namespace``'s root, or a new one outside the tree, which ``insert`` plants with
        its first span; until then a request may lock and unlock it like any node."""
        root = self._roots.get(namespace)
        return root if root is not None else TreeNode(key=[], lock_ref=1, namespace=namespace)

    def _forget_if_empty(self, node: TreeNode) -> None:
        """Drop ``node`` from the roots if it is one with no span under it and no lock."""
        empty = node.parent is None and not node.children and node.lock_ref == 1
        if empty and self._roots.get(node.namespace) is node:
            del self._roots[node.namespace]

    # ----- lookup -------------------------------------------------------------------------

    def match_length(self, tokens: Sequence[int], namespace: str = "") -> int:
        """Length of the longest cached prefix, without touching the tree (for scheduling)."""
        node, matched = self.root(namespace), 0
        if node is None:
            return 0
        while matched < len(tokens) and tokens[matched] in node.children:
            child = node.children[tokens[matched]]
            common = common_prefix_length(child.key, tokens, matched)
            matched += common
            if common < len(child.key):
                break
            node = child
        return matched

    def _descend(
        self, root: TreeNode, tokens: Sequence[int], *, new_request: bool = False
    ) -> tuple[TreeNode, int, list[TreeNode]]:
        """Walk down from ``root`` the longest cached prefix of ``tokens``, splitting a node
        where it ends inside one (as SGLang's ``_match_prefix_helper``) and touching each
        node. ``new_request``: this is a request's first lookup.

        Returns the deepest node, the matched length and the nodes on the path.
        """
        node, matched, path = root, 0, []
        while matched < len(tokens) and tokens[matched] in node.children:
            child = node.children[tokens[matched]]
            common = common_prefix_length(child.key, tokens, matched)
            if common < len(child.key):
                child = self._split(child, common)
            path.append(child)
            matched += common
            node = child
        if new_request and path and len(node.children) <= 1:
            # The tip of one conversation read again (not a prefix many share, which
            # every request reads): how long conversations take to come back.
            self._note_reuse(self._requests - node.last_request)
        for visited in path:
            visited.reused = visited.reused or new_request
            self._touch(visited)
        return node, matched, path

    def match_prefix(self, tokens: Sequence[int], namespace: str = "") -> PrefixMatch:
        """Longest cached prefix with its KV; splits the last node if the match ends inside it.

        The spans are handed over uncopied: the one copy a request needs is made by
        whoever writes after them (``kv_layout.cache_from_spans``), not here as well.
        """
        self._requests += 1
        root = self._root_or_new(namespace)
        node, matched, path = self._descend(root, tokens, new_request=True)
        if not path:
            return PrefixMatch(0, node)
        self.lock(node)  # keeps the path resident while host spans come back
        try:
            for visited in path:
                if visited.on_host:
                    self._promote(visited)
        finally:
            self.unlock(node)
        return PrefixMatch(matched, node, [visited.value for visited in path])

    def count_request(self, *, cached: int, computed: int) -> None:
        """Record how many prompt tokens a request reused and how many it computed."""
        self.cached_tokens += cached
        self.computed_tokens += computed

    # ----- references ---------------------------------------------------------------------

    def lock(self, node: TreeNode) -> None:
        """Protect ``node`` and its ancestors from eviction (one in-flight request)."""
        current: TreeNode | None = node
        while current is not None:
            current.lock_ref += 1
            if current.lock_ref == 1:
                self._account_reference(current, -1)
            current = current.parent

    def unlock(self, node: TreeNode) -> None:
        current: TreeNode | None = node
        top = node
        while current is not None:
            if current.lock_ref <= 0:
                raise UsageError("unlock without a matching lock: reference count below zero")
            current.lock_ref -= 1
            if current.lock_ref == 0:
                self._account_reference(current, +1)
            top, current = current, current.parent
        self._forget_if_empty(top)  # held by a request that matched nothing, its spans gone since

    def _account_reference(self, node: TreeNode, sign: int) -> None:
        """``node`` just became referenced (``sign=-1``) or unreferenced (``+1``)."""
        if not node.on_host:
            self.evictable_bytes += sign * node.nbytes
        self._refile(node)

    # ----- insertion ----------------------------------------------------------------------

    def insert(self, tokens: Sequence[int], kv: KVSlice, namespace: str = "") -> TreeNode:
        """Store the KV of ``tokens``; returns the deepest node now covering them.

        Only the part not already cached is read from ``kv``. When the cap leaves no
        room even after evicting every unreferenced leaf, the new span is truncated
        (possibly to nothing), so a caller must lock the returned node, not assume
        that all of ``tokens`` is cached.
        """
        root = self._root_or_new(namespace)
        node, matched, _ = self._descend(root, tokens)
        if matched == len(tokens):
            return node
        first = kv(matched, matched + 1)
        per_token = int(first.numel() * first.element_size())
        self.lock(node)
        try:
            fits = self._make_room(per_token * (len(tokens) - matched)) // per_token
        finally:
            self.unlock(node)
        take = min(len(tokens) - matched, fits)
        if take <= 0:
            return node
        value = kv(matched, matched + take).to(self.device).contiguous()
        child = TreeNode(key=list(tokens[matched : matched + take]), value=value, parent=node)
        node.children[child.key[0]] = child
        node.device_children += 1
        # Plants a new root, or again one that making room above left empty and dropped.
        self._roots[namespace] = root
        self._touch(child)
        self.node_count += 1
        self.device_bytes += child.nbytes
        self.evictable_bytes += child.nbytes
        self._refile(node)
        self._refile(child)
        return child

    # ----- eviction -----------------------------------------------------------------------

    def evict(self, num_bytes: int) -> int:
        """Free at least ``num_bytes`` of device memory if unreferenced spans allow it."""
        freed = 0
        while freed < num_bytes:
            victim = self._device_leaves.pop()
            if victim is None:
                break
            freed += victim.nbytes
            if not self._offload(victim):
                self._delete(victim)
        return freed

    def stats(self) -> CacheStats:
        total = self.cached_tokens + self.computed_tokens
        return CacheStats(
            cached_tokens=self.cached_tokens,
            computed_tokens=self.computed_tokens,
            hit_rate=self.cached_tokens / total if total else 0.0,
            evictions=self.evictions,
            offloads=self.offloads,
            bytes_in_use=self.device_bytes,
            host_bytes_in_use=self.host_bytes,
            evictable_bytes=self.evictable_bytes,
            max_bytes=self.max_bytes,
            nodes=self.node_count,
        )

    def _make_room(self, wanted: int) -> int:
        """Evict until ``wanted`` bytes fit (or nothing is left to evict); returns room."""
        shortfall = self.device_bytes + wanted - self.max_bytes
        if shortfall > 0:
            self.evict(shortfall)
        return max(self.max_bytes - self.device_bytes, 0)

    def _offload(self, node: TreeNode) -> bool:
        """Move an evicted span to host memory if the host tier has (or can make) room."""
        assert node.parent is not None and node.lock_ref == 0
        if node.nbytes > self.offload_max_bytes:
            return False
        while self.host_bytes + node.nbytes > self.offload_max_bytes:
            victim = self._host_leaves.pop()
            if victim is None:
                return False
            self._delete(victim)
        size = node.nbytes
        node.value = node.value.to("cpu")
        node.on_host = True
        node.parent.device_children -= 1
        self.device_bytes -= size
        self.evictable_bytes -= size
        self.host_bytes += size
        self.offloads += 1
        self._refile(node)
        self._refile(node.parent)
        return True

    def _promote(self, node: TreeNode) -> None:
        """Bring a host span back to the device when the cap allows; else it is read from host."""
        assert node.parent is not None
        size = node.nbytes
        if self._make_room(size) < size:
            return
        node.value = node.value.to(self.device)
        node.on_host = False
        node.parent.device_children += 1
        self.host_bytes -= size
        self.device_bytes += size
        if node.lock_ref == 0:
            self.evictable_bytes += size
        self._refile(node)
        self._refile(node.parent)

    def _delete(self, node: TreeNode) -> None:
        """Drop ``node`` and its (unreferenced, host-resident) subtree."""
        assert node.parent is not None and node.lock_ref == 0
        for child in list(node.children.values()):
            self._delete(child)
        if node.on_host:
            self.host_bytes -= node.nbytes
        else:
            self.device_bytes -= node.nbytes
            self.evictable_bytes -= node.nbytes
            node.parent.device_children -= 1
        del node.parent.children[node.key[0]]
        node.value = None
        self.node_count -= 1
        self.evictions += 1
        self._device_leaves.file(node, False)
        self._host_leaves.file(node, False)
        self._refile(node.parent)
        self._forget_if_empty(node.parent)

    def _split(self, child: TreeNode, length: int) -> TreeNode:
        """Cut ``child`` after ``length`` tokens; returns the upper part (SGLang _split_node).

        Byte counts and the parent's device children stay as they were; the upper part
        has a child, so it is no leaf, and the lower part keeps its place in the queues.
        """
        assert child.parent is not None and 0 < length < len(child.key)
        upper = TreeNode(
            key=child.key[:length],
            value=child.value.narrow(SEQ_DIM, 0, length).clone(),
            parent=child.parent,
            lock_ref=child.lock_ref,
            on_host=child.on_host,
            last_access=child.last_access,
            last_request=child.last_request,
            reused=child.reused,
            rank=child.rank,
            device_children=0 if child.on_host else 1,
        )
        rest = child.value.size(SEQ_DIM) - length
        child.value = child.value.narrow(SEQ_DIM, length, rest).clone()
        child.key = child.key[length:]
        child.parent.children[upper.key[0]] = upper
        child.parent = upper
        upper.children[child.key[0]] = child
        self.node_count += 1
        return upper

    def _touch(self, node: TreeNode) -> None:
        """Mark ``node`` as the most recently used and rank it; nodes along one lookup get
        increasing counts, so of two leaves on one path the ancestor is older."""
        self._accesses += 1
        node.last_access = self._accesses
        node.last_request = self._requests
        node.rank = self._requests
        if node.reused:
            node.rank += self.head_start
        self._device_leaves.touched(node)
        self._host_leaves.touched(node)

    def _note_reuse(self, interval: int) -> None:
        """Sample how many requests a conversation took to come back; set the head start."""
        if self.eviction != "reuse":
            return
        self._reuse_intervals.append(interval)
        ordered = sorted(self._reuse_intervals)
        self.head_start = ordered[int(REUSE_QUANTILE * (len(ordered) - 1))]

    def _refile(self, node: TreeNode) -> None:
        """Re-file ``node`` in the eviction queues after its references, residency or
        children changed (every such change calls this, for each node it affects)."""
        if node.parent is None:  # a root is never evicted
            return
        free = node.lock_ref == 0
        self._device_leaves.file(node, free and not node.on_host and node.device_children == 0)
        self._host_leaves.file(node, free and node.on_host and not node.children)


def common_prefix_length(key: Sequence[object], tokens: Sequence[object], offset: int = 0) -> int:
    """How many leading tokens of ``key`` equal ``tokens`` from ``offset`` on."""
    limit = min(len(key), len(tokens) - offset)
    if list(key[:limit]) == list(tokens[offset : offset + limit]):  # the usual, whole-span match
        return limit
    i = 0
    while i < limit and key[i] == tokens[offset + i]:
        i += 1
    return i
