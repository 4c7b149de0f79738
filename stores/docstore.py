"""The chunks behind the vector slots: text, metadata, source and owning document id.

One record per slot (``None`` once deleted), so a search hit's slot is its
record. Stored as JSON lines, never pickled: a store file from anywhere can be
loaded without running code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.documents import Document
from ctxproto.errors import StoreError

__all__ = ["DocStore", "MetadataFilter"]

MetadataFilter = Mapping[str, Any]
"""``{key: value}`` or ``{key: [v1, v2]}``: a chunk matches when each key's metadata value
equals the value (or is one of the listed values)."""


class DocStore:
    """Chunk records by slot, plus the slots of each document id."""

    def __init__(self) -> None:
        self.records: list[Document | None] = []
        self.doc_ids: list[str | None] = []
        self.slots_by_doc: dict[str, list[int]] = {}
        self._filter_masks: dict[str, npt.NDArray[np.bool_]] = {}

    def __len__(self) -> int:
        return len(self.slots_by_doc)

    def append(self, doc_id: str, chunks: Sequence[Document]) -> None:
        """Record ``chunks`` of ``doc_id`` at the next slots."""
        slots = self.slots_by_doc.setdefault(doc_id, [])
        for chunk in chunks:
            slots.append(len(self.records))
            self.records.append(chunk)
            self.doc_ids.append(doc_id)
        self._filter_masks.clear()

    def pop_document(self, doc_id: str) -> list[int]:
        """Forget ``doc_id``; returns the slots it held (empty when unknown)."""
        slots = self.slots_by_doc.pop(doc_id, [])
        for slot in slots:
            self.records[slot] = None
            self.doc_ids[slot] = None
        self._filter_masks.clear()
        return slots

    def remap(self, mapping: npt.NDArray[np.int64]) -> None:
        """Apply a compaction: ``mapping[old_slot]`` is the new slot or -1."""
        keep = [int(old) for old in np.flatnonzero(mapping >= 0)]
        self.records = [self.records[old] for old in keep]
        self.doc_ids = [self.doc_ids[old] for old in keep]
        self.slots_by_doc = {}
        for slot, doc_id in enumerate(self.doc_ids):
            if doc_id is not None:
                self.slots_by_doc.setdefault(doc_id, []).append(slot)
        self._filter_masks.clear()

    def filter_mask(self, filters: MetadataFilter) -> npt.NDArray[np.bool_]:
        """Slots whose metadata matches ``filters`` (memoized until the store changes)."""
        key = json.dumps(filters, sort_keys=True, default=str)
        mask = self._filter_masks.get(key)
        if mask is None:
            wanted = {
                k: v if isinstance(v, list | tuple | set) else [v] for k, v in filters.items()
            }
            mask = np.fromiter(
                (
                    record is not None
                    and all(record.metadata.get(k) in values for k, values in wanted.items())
                    for record in self.records
                ),
                dtype=bool,
                count=len(self.records),
            )
            self._filter_masks[key] = mask
        return mask

    def to_jsonl(self) -> bytes:
        lines = (
            "null"
            if record is None
            else json.dumps({"doc_id": doc_id, **record.model_dump(mode="json")})
            for record, doc_id in zip(self.records, self.doc_ids, strict=True)
        )
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def from_jsonl(cls, lines: Iterable[str]) -> DocStore:
        store = cls()
        try:
            for line in lines:
                raw = json.loads(line)
                if raw is None:
                    store.records.append(None)
                    store.doc_ids.append(None)
                    continue
                doc_id = str(raw.pop("doc_id"))
                store.append(doc_id, [Document.model_validate(raw)])
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the docstore is corrupt: {exc}") from exc
        return store
