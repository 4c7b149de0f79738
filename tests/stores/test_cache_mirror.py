"""The in-memory mirror of the semantic cache, shared by a process's threads."""

from __future__ import annotations

import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from ctxproto.stores.semantic_cache.mirror import CacheMirror, MirrorEntry
from ctxproto.stores.semantic_cache.query_slots import QuerySlots

DIMENSION = 384
"""The default embedder's: a vector is 1.5 kB."""
VECTOR_BYTES = DIMENSION * 4


def unit_vectors(count: int) -> npt.NDArray[np.float32]:
    vectors = np.random.default_rng(0).standard_normal((count, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


@contextmanager
def allocations() -> Iterator[Callable[[], int]]:
    """A function that tells the bytes allocated since the block began (numpy's included)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield lambda: tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_threads_may_search_while_others_add_and_forget() -> None:
    dimension, rounds = 16, 800
    mirror = CacheMirror(dimension)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rounds * 4, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    slots = QuerySlots.of("How do I reset my password?")
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for number in range(rounds):
                batch = range(number * 4, number * 4 + 4)
                mirror.add([MirrorEntry(str(i), "t", "c", "q", vectors[i], slots) for i in batch])
                mirror.forget(str(number * 4))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            done.set()

    def search() -> None:
        try:
            while not done.is_set():
                mirror.search("t", "c", vectors[1], len(vectors))  # every live entry
        except BaseException as exc:
            errors.append(exc)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so the race shows up if it exists
    threads = [threading.Thread(target=write), *(threading.Thread(target=search) for _ in range(2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sys.setswitchinterval(switch)
    assert errors == []
    assert mirror.search("t", "c", vectors[9], 1)[0].key == "9"
    assert "8" not in {c.key for c in mirror.search("t", "c", vectors[8], 8)}  # forgotten


def test_a_scope_costs_about_its_vectors_and_nothing_once_forgotten() -> None:
    """With the ``conversation`` scope nearly every answer is a scope of its own. Each
    scope reserved 64 rows (96 kB), and forgetting its entry kept them all: 20,000
    forgotten one-entry scopes held 1.9 GB."""
    scopes = 500
    vectors = unit_vectors(scopes)
    slots = QuerySlots.of("How old is he?")
    entries = [MirrorEntry(str(i), "t", f"chat {i}", "q", vectors[i], slots) for i in range(scopes)]
    mirror = CacheMirror(DIMENSION)
    CacheMirror(DIMENSION).add(entries[:1])  # faiss is imported before anything is measured

    with allocations() as allocated:
        mirror.add(entries)
        held = allocated()
        for entry in entries:
            mirror.forget(entry.key)
        left = allocated()
    assert held < scopes * 4 * VECTOR_BYTES
    assert left < scopes * VECTOR_BYTES // 4
    assert mirror.search("t", "chat 7", vectors[7], 1) == []


def test_a_scope_mostly_forgotten_is_compacted_and_still_finds_the_rest() -> None:
    count = 1000
    vectors = unit_vectors(count)
    slots = QuerySlots.of("How do I reset my password?")
    entries = [MirrorEntry(str(i), "t", "c", "q", vectors[i], slots) for i in range(count)]
    mirror = CacheMirror(DIMENSION)
    CacheMirror(DIMENSION).add(entries[:1])  # faiss is imported before anything is measured

    with allocations() as allocated:
        mirror.add(entries)
        held = allocated()
        for entry in entries[:900]:
            mirror.forget(entry.key)
        left = allocated()
    assert left < held // 4
    for i in (900, 950, 999):
        assert [c.key for c in mirror.search("t", "c", vectors[i], 1)] == [str(i)]
    assert mirror.search("t", "c", vectors[5], 100)[0].key != "5"  # forgotten
    mirror.forget("950")  # its slot moved when the index was compacted
    assert "950" not in {c.key for c in mirror.search("t", "c", vectors[950], 100)}
    assert len(mirror.search("t", "c", vectors[950], count)) == 99
