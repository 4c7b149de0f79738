"""A radix tree over token ids whose nodes hold the KV tensors of their token spans.

The design follows SGLang's RadixAttention (``python/sglang/srt/mem_cache/radix_cache.py``,
Zheng et al. 2024, "SGLang: Efficient Execution of Structured Language Model
Programs"): each edge is a span of tokens; a lookup that ends inside a span splits
the node there; in-flight requests hold reference counts on the path they use, and
memory is reclaimed by evicting the least recently used unreferenced leaves.

Differences that suit a transformers engine: a node owns one tensor
``[layers, 2 (key/value), kv_heads, span, head_dim]`` instead of indices into a
paged pool, and the byte cap is enforced on insert — a span that does not fit after
eviction is truncated, so the cap is never exceeded. With ``offload_max_bytes`` a
node evicted from the device moves to host memory first (SGLang's HiCache idea) and
is brought back when a lookup reaches it.

Each ``namespace`` (a tenant, say) has its own tree: requests never share KV
across namespaces, so the time to first token cannot reveal whether another
tenant sent the same prefix (the prompt-leakage channel that vLLM's ``cache_salt``
closes). All namespaces share one byte cap and one LRU order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ctxproto.errors import ConfigError, UsageError

__all__ = ["CacheStats", "PrefixMatch", "RadixKVCache", "TreeNode"]

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
    last_access: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return 0 if self.value is None else int(self.value.numel() * self.value.element_size())


@dataclass
class PrefixMatch:
    """The longest cached prefix of a token sequence."""

    length: int
    node: TreeNode
    """The deepest matched node: lock it while the request runs."""
    kv: Any = None
    """The prefix KV on the cache device, ``None`` when ``length == 0``."""


class CacheStats(BaseModel):
    """Counters of a prefix cache; ``hit_rate`` is cached / (cached + computed) prompt tokens."""

    cached_tokens: int
    computed_tokens: int
    hit_rate: float
    evictions: int
    offloads: int
    bytes_in_use: int
    host_bytes_in_use: int
    max_bytes: int
    nodes: int


class RadixKVCache:
    """Prefix-KV store shared by all requests of one engine (not thread-safe: one scheduler)."""

    def __init__(self, max_bytes: int, *, offload_max_bytes: int = 0, device: Any = "cpu") -> None:
        if max_bytes < 0 or offload_max_bytes < 0:
            raise ConfigError("cache sizes must be >= 0 bytes", key="max_bytes")
        self.max_bytes = max_bytes
        self.offload_max_bytes = offload_max_bytes
        self.device = device
        self.reset()

    def reset(self) -> None:
        self._roots: dict[str, TreeNode] = {}
        self.device_bytes = 0
        self.host_bytes = 0
        self.evictions = 0
        self.offloads = 0
        self.cached_tokens = 0
        self.computed_tokens = 0

    def root(self, namespace: str = "") -> TreeNode:
        """The (empty-span, always referenced) root of ``namespace``'s tree."""
        if namespace not in self._roots:
            self._roots[namespace] = TreeNode(key=[], lock_ref=1)
        return self._roots[namespace]

    # ----- lookup -------------------------------------------------------------------------

    def match_length(self, tokens: Sequence[int], namespace: str = "") -> int:
        """Length of the longest cached prefix, without touching the tree (for scheduling)."""
        node, matched = self.root(namespace), 0
        while matched < len(tokens) and tokens[matched] in node.children:
            child = node.children[tokens[matched]]
            common = _common_length(child.key, tokens, matched)
            matched += common
            if common < len(child.key):
                break
            node = child
        return matched

    def _descend(
        self, tokens: Sequence[int], namespace: str
    ) -> tuple[TreeNode, int, list[TreeNode]]:
        """Walk down the longest cached prefix of ``tokens``, splitting a node where it ends
        inside one (as SGLang's ``_match_prefix_helper``) and touching each node for LRU.

        Returns the deepest node, the matched length and the nodes on the path.
        """
        node, matched, path = self.root(namespace), 0, []
        now = time.monotonic()
        while matched < len(tokens) and tokens[matched] in node.children:
            child = node.children[tokens[matched]]
            common = _common_length(child.key, tokens, matched)
            if common < len(child.key):
                child = self._split(child, common)
            child.last_access = now
            path.append(child)
            matched += common
            node = child
        return node, matched, path

    def match_prefix(self, tokens: Sequence[int], namespace: str = "") -> PrefixMatch:
        """Longest cached prefix with its KV; splits the last node if the match ends inside it."""
        node, matched, path = self._descend(tokens, namespace)
        if not path:
            return PrefixMatch(0, node)
        self.lock(node)  # keeps the path resident while host spans come back
        try:
            for visited in path:
                if visited.on_host:
                    self._promote(visited)
            kv = _torch().cat([n.value.to(self.device) for n in path], dim=SEQ_DIM)
        finally:
            self.unlock(node)
        return PrefixMatch(matched, node, kv)

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
            current = current.parent

    def unlock(self, node: TreeNode) -> None:
        current: TreeNode | None = node
        while current is not None:
            if current.lock_ref <= 0:
                raise UsageError("unlock without a matching lock: reference count below zero")
            current.lock_ref -= 1
            current = current.parent

    # ----- insertion ----------------------------------------------------------------------

    def insert(self, tokens: Sequence[int], kv: KVSlice, namespace: str = "") -> TreeNode:
        """Store the KV of ``tokens``; returns the deepest node now covering them.

        Only the part not already cached is read from ``kv``. When the cap leaves no
        room even after evicting every unreferenced leaf, the new span is truncated
        (possibly to nothing), so a caller must lock the returned node, not assume
        that all of ``tokens`` is cached.
        """
        node, matched, _ = self._descend(tokens, namespace)
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
        self.device_bytes += child.nbytes
        return child

    # ----- eviction -----------------------------------------------------------------------

    def evict(self, num_bytes: int) -> int:
        """Free at least ``num_bytes`` of device memory if unreferenced spans allow it."""
        freed = 0
        while freed < num_bytes:
            victim = self._lru_device_leaf()
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
            max_bytes=self.max_bytes,
            nodes=len(self._nodes()) - len(self._roots),
        )

    def _make_room(self, wanted: int) -> int:
        """Evict until ``wanted`` bytes fit (or nothing is left to evict); returns room."""
        shortfall = self.device_bytes + wanted - self.max_bytes
        if shortfall > 0:
            self.evict(shortfall)
        return max(self.max_bytes - self.device_bytes, 0)

    def _lru_device_leaf(self) -> TreeNode | None:
        candidates = [
            n
            for n in self._nodes()
            if n.parent is not None
            and not n.on_host
            and n.lock_ref == 0
            and not any(not c.on_host for c in n.children.values())
        ]
        return min(candidates, key=lambda n: n.last_access, default=None)

    def _offload(self, node: TreeNode) -> bool:
        """Move an evicted span to host memory if the host tier has (or can make) room."""
        if node.nbytes > self.offload_max_bytes:
            return False
        while self.host_bytes + node.nbytes > self.offload_max_bytes:
            leaves = [n for n in self._nodes() if n.on_host and not n.children and n.lock_ref == 0]
            if not leaves:
                return False
            self._delete(min(leaves, key=lambda n: n.last_access))
        size = node.nbytes
        node.value = node.value.to("cpu")
        node.on_host = True
        self.device_bytes -= size
        self.host_bytes += size
        self.offloads += 1
        return True

    def _promote(self, node: TreeNode) -> None:
        """Bring a host span back to the device when the cap allows; else it is read from host."""
        size = node.nbytes
        if self._make_room(size) < size:
            return
        node.value = node.value.to(self.device)
        node.on_host = False
        self.host_bytes -= size
        self.device_bytes += size

    def _delete(self, node: TreeNode) -> None:
        """Drop ``node`` and its (unreferenced, host-resident) subtree."""
        assert node.parent is not None and node.lock_ref == 0
        for child in list(node.children.values()):
            self._delete(child)
        if node.on_host:
            self.host_bytes -= node.nbytes
        else:
            self.device_bytes -= node.nbytes
        del node.parent.children[node.key[0]]
        node.value = None
        self.evictions += 1

    def _split(self, child: TreeNode, length: int) -> TreeNode:
        """Cut ``child`` after ``length`` tokens; returns the upper part (SGLang _split_node)."""
        assert child.parent is not None and 0 < length < len(child.key)
        upper = TreeNode(
            key=child.key[:length],
            value=child.value.narrow(SEQ_DIM, 0, length).clone(),
            parent=child.parent,
            lock_ref=child.lock_ref,
            on_host=child.on_host,
            last_access=child.last_access,
        )
        rest = child.value.size(SEQ_DIM) - length
        child.value = child.value.narrow(SEQ_DIM, length, rest).clone()
        child.key = child.key[length:]
        child.parent.children[upper.key[0]] = upper
        child.parent = upper
        upper.children[child.key[0]] = child
        return upper

    def _nodes(self) -> list[TreeNode]:
        found, stack = [], list(self._roots.values())
        while stack:
            node = stack.pop()
            found.append(node)
            stack.extend(node.children.values())
        return found


def _common_length(key: Sequence[int], tokens: Sequence[int], offset: int) -> int:
    limit = min(len(key), len(tokens) - offset)
    if list(key[:limit]) == list(tokens[offset : offset + limit]):  # the usual, whole-span match
        return limit
    i = 0
    while i < limit and key[i] == tokens[offset + i]:
        i += 1
    return i


def _torch() -> Any:
    from ctxproto._extras import require

    return require("torch", extra="runtime")
