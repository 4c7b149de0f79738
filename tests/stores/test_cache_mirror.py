"""The in-memory mirror of the semantic cache, shared by a process's threads."""

from __future__ import annotations

import sys
import threading

import numpy as np

from ctxproto.stores.semantic_cache.mirror import CacheMirror, MirrorEntry
from ctxproto.stores.semantic_cache.query_slots import QuerySlots


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
                mirror.add([MirrorEntry(str(i), "t", "c", vectors[i], slots) for i in batch])
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
