"""The running batch: requests decoded together, one token each per model call.

A decode step is bound by reading the weights, which happens once per step whatever
the batch size (measured step times: docs/runtime.md, ``ctxproto bench decode``),
so decoding concurrent requests together multiplies throughput.
Rows have different lengths, so the KV is left-padded to a common length and the
padding is masked out; positions are passed per row, so a row's numbers do not
depend on its neighbours (the usual transformers batched-generation layout).
A batch of one, or of equal lengths, runs with no mask — exactly the plain path.
A batch of one may instead verify a speculative draft: several tokens in one
call, then a rewind of the KV to the tokens kept (engine.py, speculation.py).
"""

from __future__ import annotations

from typing import Any

from ctxproto._extras import require
from ctxproto.models.head_rescoring import rescores_in_float
from ctxproto.runtime.kv_layout import row_kv_slice
from ctxproto.runtime.radix_cache import KVSlice
from ctxproto.runtime.request import Request

__all__ = ["DecodeBatch"]


class DecodeBatch:
    """Left-padded ``DynamicCache`` of the running requests, with their true lengths."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.requests: list[Request] = []
        self.lengths: list[int] = []
        self._cache: Any = None

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def width(self) -> int:
        return max(self.lengths, default=0)

    def add(self, entries: list[tuple[Request, Any]]) -> None:
        """Join prefilled requests (each with its batch-1 ``DynamicCache``) in one copy."""
        if not entries:
            return
        if not self.requests and len(entries) == 1:  # nothing to merge: keep its spare room
            request, cache = entries[0]
            self._cache = cache
            self.requests, self.lengths = [request], [cache.get_seq_length()]
            return
        torch = require("torch", extra="runtime")
        caches = ([self._cache] if self.requests else []) + [cache for _, cache in entries]
        # Read before the merge: into an empty batch the first joiner's cache object
        # becomes the merged one, and its length would then read as the padded width.
        lengths = [cache.get_seq_length() for _, cache in entries]
        width = max([self.width, *lengths])
        merged = caches[0]
        # Every layer's tensors first, then all assigned: a copy that fails partway (out
        # of memory) leaves the running batch's cache as it was, not half of it merged.
        joined = [
            (
                torch.cat([_pad_left(c.layers[index].keys, width) for c in caches]),
                torch.cat([_pad_left(c.layers[index].values, width) for c in caches]),
            )
            for index in range(len(merged.layers))
        ]
        for layer, (keys, values) in zip(merged.layers, joined, strict=True):
            layer.keys, layer.values = keys, values
        self._cache = merged
        self.requests.extend(request for request, _ in entries)
        self.lengths.extend(lengths)

    def step(self) -> Any:
        """Feed each row its last token; returns next-token logits ``[rows, vocab]``."""
        torch = require("torch", extra="runtime")
        device = self._model.device
        width = self.width
        tokens = torch.tensor([[r.output[-1]] for r in self.requests], device=device)
        positions = torch.tensor(self.lengths, device=device).unsqueeze(1)
        mask = None
        if any(length != width for length in self.lengths):
            columns = torch.arange(width + 1, device=device)
            pads = torch.tensor([width - n for n in self.lengths], device=device).unsqueeze(1)
            mask = (columns.unsqueeze(0) >= pads).long()
        out = self._model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.lengths = [n + 1 for n in self.lengths]
        return out.logits[:, -1, :]

    def verify(self, draft: list[int], banned: frozenset[int] = frozenset()) -> list[int]:
        """Feed the one running row its last token and ``draft`` in one forward pass.

        Returns the greedy choice after each fed token (``len(draft) + 1`` ids), never
        one of ``banned``. The
        KV of every fed token is kept; ``rewind`` drops what the caller rejects.
        A float LM head is applied as ``weight @ hidden.T``: for a few rows that
        product streams the 49k x 576 weight once, where ``linear`` took twice as
        long for two rows as for one (docs/runtime.md). A rounded head that rescores
        its best candidates is called as it is, so the choices are a step's.
        """
        torch = require("torch", extra="runtime")
        device = self._model.device
        fed = [self.requests[0].output[-1], *draft]
        start = self.lengths[0]
        hidden = self._model.get_decoder()(
            input_ids=torch.tensor([fed], device=device),
            position_ids=torch.arange(start, start + len(fed), device=device).unsqueeze(0),
            cache=self._cache,
            use_cache=True,
        ).last_hidden_state[0]
        self.lengths = [start + len(fed)]
        head = self._model.get_output_embeddings()
        if rescores_in_float(head):  # one-token steps rank with its rescoring: so must this
            logits = head(hidden).T
        else:
            logits = torch.mm(head.weight, hidden.T)
            if getattr(head, "bias", None) is not None:
                logits += head.bias.unsqueeze(1)
        if banned:
            logits[list(banned)] = float("-inf")
        return [int(choice) for choice in logits.argmax(0).tolist()]

    def rewind(self, length: int) -> None:
        """Keep the KV of the one row's first ``length`` tokens only.

        The in-place layers keep their store, so the next step writes over what was
        dropped instead of allocating (kv_layout.py).
        """
        for layer in self._cache.layers:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
        self.lengths = [length]

    def kv_of(self, row: int) -> KVSlice:
        """The row's KV by token position (padding skipped), for inserting into the cache."""
        return row_kv_slice(self._cache, row, self._cache.get_seq_length() - self.lengths[row])

    def keep(self, rows: list[int]) -> None:
        """Drop every row not listed, and the padding columns no remaining row needs."""
        if len(rows) == len(self.requests):
            return
        self.requests = [self.requests[i] for i in rows]
        self.lengths = [self.lengths[i] for i in rows]
        if not rows:
            self._cache = None
            return
        torch = require("torch", extra="runtime")
        index = torch.tensor(rows, device=self._model.device)
        width = self.width
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, -width:]
            layer.values = layer.values[index, :, -width:]


def _pad_left(tensor: Any, width: int) -> Any:
    torch = require("torch", extra="runtime")
    missing = width - tensor.size(2)
    if missing == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, missing, 0))
