"""A thread hands its OpenMP workers back: the process really loses those threads."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from ctxproto.models.openmp import release_thread_pool, releasing_thread_pool

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or torch.get_num_threads() < 2,
    reason="reads this process's threads in /proc with a parallel torch build",
)


def _thread_ids() -> set[int]:
    return {int(task.name) for task in Path("/proc/self/task").iterdir()}


def _parallel_work() -> None:
    """An operator large enough that torch runs it on every thread."""
    torch.ones(1 << 22).sum()


def test_a_thread_keeps_its_workers_until_it_releases_them() -> None:
    # FAISS and scikit-learn (through sentence-transformers) map libgomp copies of
    # their own after torch's: the one torch runs on must still be the one released.
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    seen: dict[str, set[int] | bool] = {}

    def worker() -> None:
        before = _thread_ids()
        _parallel_work()
        seen["workers"] = _thread_ids() - before
        seen["released"] = release_thread_pool()
        seen["after_release"] = _thread_ids()
        _parallel_work()  # a later parallel operator still runs, on a new pool
        seen["rebuilt"] = _thread_ids() - before
        with releasing_thread_pool():
            _parallel_work()
        seen["after_block"] = _thread_ids()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    workers, rebuilt = seen["workers"], seen["rebuilt"]
    assert isinstance(workers, set) and isinstance(rebuilt, set)
    assert len(workers) == torch.get_num_threads() - 1
    assert seen["released"] is True
    assert not workers & seen["after_release"]  # type: ignore[operator]
    assert len(rebuilt) == len(workers)
    assert not rebuilt & seen["after_block"]  # type: ignore[operator]


def test_the_engine_thread_idles_without_workers() -> None:
    """The scheduler frees its pool once no request is left: only its own thread stays."""
    from ctxproto.runtime import Engine, GenerationParams

    with Engine(prefix_cache=False, max_batch_size=1) as engine:
        before = _thread_ids()  # the loading thread has released its own workers
        engine.generate(
            [{"role": "user", "content": "Say hi."}], GenerationParams(max_new_tokens=2)
        )
        assert engine._thread is not None
        scheduler = {engine._thread.native_id}
        deadline = time.monotonic() + 5
        while _thread_ids() - before != scheduler and time.monotonic() < deadline:
            time.sleep(0.05)  # the scheduler releases right after its last reply
        assert _thread_ids() - before == scheduler
