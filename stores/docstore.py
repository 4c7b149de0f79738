"""The chunks behind the vector slots: text, metadata, source and owning document id.

One record per slot (``None`` once deleted), so a search hit's slot is its
record. Stored as JSON lines, never pickled: a store file from anywhere can be
loaded without running code.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError
from ctxproto.stores.lexical_index import LexicalIndex

__all__ = ["DocStore", "MetadataFilter", "filter_key"]

MetadataFilter = Mapping[str, Any]
"""``{key: value}`` or ``{key: [v1, v2]}``: a chunk matches when each key's metadata value
equals the value (or is one of the listed values). Values are strings, numbers, booleans
or ``None``; a list, tuple or set of them means "any of"."""

_SCALARS = (str, int, float, bool, type(None))
_COLLECTIONS = (list, tuple, set, frozenset)
FilterKey = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]


class DocStore:
    """Chunk records by slot, plus the slots of each document id."""

    def __init__(self) -> None:
        self.records: list[Document | None] = []
        self.doc_ids: list[str | None] = []
        self.slots_by_doc: dict[str, list[int]] = {}
        self._filter_masks: dict[FilterKey, npt.NDArray[np.bool_]] = {}
        self._lexical: LexicalIndex | None = None
        self._lexical_lock = threading.Lock()
        self._version = 0
        """Bumped by every change: an index built across a change is not kept."""

    def __len__(self) -> int:
        return len(self.slots_by_doc)

    def append(self, doc_id: str, chunks: Sequence[Document]) -> None:
        """Record ``chunks`` of ``doc_id`` at the next slots."""
        slots = self.slots_by_doc.setdefault(doc_id, [])
        for chunk in chunks:
            slots.append(len(self.records))
            self.records.append(chunk)
            self.doc_ids.append(doc_id)
        self._forget_derived()

    def pop_document(self, doc_id: str) -> list[int]:
        """Forget ``doc_id``; returns the slots it held (empty when unknown)."""
        slots = self.slots_by_doc.pop(doc_id, [])
        for slot in slots:
            self.records[slot] = None
            self.doc_ids[slot] = None
        self._forget_derived()
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
        self._forget_derived()

    def lexical_index(self) -> LexicalIndex:
        """A BM25 index of the chunk texts by slot (built on first use until the store changes).

        Concurrent first queries build it once; a change made while it was being
        built leaves it unkept, so no query uses an index of an older store.
        """
        with self._lexical_lock:
            if self._lexical is None:
                version = self._version
                index = LexicalIndex(
                    [None if record is None else record.text for record in self.records]
                )
                if version != self._version:
                    return index
                self._lexical = index
            return self._lexical

    def _forget_derived(self) -> None:
        self._filter_masks.clear()
        self._lexical = None
        self._version += 1

    def filter_mask(self, filters: MetadataFilter) -> npt.NDArray[np.bool_]:
        """Slots whose metadata matches ``filters`` (memoized until the store changes)."""
        key = filter_key(filters)
        mask = self._filter_masks.get(key)
        if mask is None:
            wanted = {k: _Allowed.of(value for _, value in values) for k, values in key}
            mask = np.fromiter(
                (
                    record is not None
                    and all(record.metadata.get(k) in allowed for k, allowed in wanted.items())
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
        # One terminated line per record: an empty store is an empty file, not a blank line.
        return "".join(line + "\n" for line in lines).encode("utf-8")

    @classmethod
    def from_jsonl(cls, lines: Iterable[str]) -> DocStore:
        store = cls()
        number = 0
        try:
            for number, line in enumerate(lines, start=1):  # noqa: B007 (read in the except)
                raw = json.loads(line)
                if raw is None:
                    store.records.append(None)
                    store.doc_ids.append(None)
                    continue
                doc_id = str(raw.pop("doc_id"))
                store.append(doc_id, [Document.model_validate(raw)])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # the line number, never the contents: a store file may be a link to any file
            raise StoreError(f"the docstore is corrupt at line {number}") from exc
        return store


@dataclass(frozen=True)
class _Allowed:
    """The values a filter allows for one key, tested by hash, not one by one.

    A boolean equals only a boolean: with Python's ``True == 1`` a filter
    ``{"public": True}`` also returned chunks marked ``"public": 1``, which the
    PostgreSQL store (JSON ``true`` is not ``1``) does not. Numbers compare by
    value (``1`` matches ``1.0``) on both. A filter mask tests every record, so
    each test is a set lookup (100k records against 50 values: a comparison
    with each value took three times as long).
    """

    flags: frozenset[bool]
    others: frozenset[Any]

    @classmethod
    def of(cls, values: Iterable[Any]) -> _Allowed:
        listed = list(values)
        return cls(
            frozenset(v for v in listed if isinstance(v, bool)),
            frozenset(v for v in listed if not isinstance(v, bool)),
        )

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool):
            return value in self.flags
        try:
            return value in self.others
        except TypeError:  # a list or an object in the metadata equals no filter value
            return False


def filter_key(filters: MetadataFilter) -> FilterKey:
    """``filters`` as a hashable key that keeps each value's type.

    Memoized masks are looked up by this key, so two filters share a mask only
    when they select the same chunks: ``{"tenant": {"acme"}}`` and
    ``{"tenant": "{'acme'}"}`` are different keys (a text encoding with
    ``default=str`` made them one, and one tenant's search returned another's
    documents). A value of any other type is a ``ConfigError``, not a guess.
    """
    if not isinstance(filters, Mapping):
        raise ConfigError("filters must be a mapping", key="filters", expected="{key: value}")
    encoded = []
    for name, value in filters.items():
        if not isinstance(name, str):
            raise ConfigError(f"filter key {name!r} is not a string", key="filters")
        values = sorted(value, key=repr) if isinstance(value, _COLLECTIONS) else [value]
        for item in values:
            if not isinstance(item, _SCALARS):
                raise ConfigError(
                    f"unsupported filter value of type {type(item).__name__}",
                    key=f"filters.{name}",
                    expected="a string, number, boolean or null, or a list of them",
                )
        encoded.append((name, tuple(dict.fromkeys((type(v).__name__, v) for v in values))))
    return tuple(sorted(encoded))
