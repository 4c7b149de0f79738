"""A thread hands its OpenMP workers back: the process really has fewer threads after."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from ctxproto.models.openmp import release_thread_pool, releasing_thread_pool

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or torch.get_num_threads() < 2,
    reason="counts this process's threads in /proc with a parallel torch build",
)


def _thread_count() -> int:
    return len(list(Path("/proc/self/task").iterdir()))


def _parallel_work() -> None:
    """An operator large enough that torch runs it on every thread."""
    torch.ones(1 << 22).sum()


def test_a_thread_keeps_its_workers_until_it_releases_them() -> None:
    counts: dict[str, int] = {}

    def worker() -> None:
        _parallel_work()
        counts["after_work"] = _thread_count()
        counts["released"] = int(release_thread_pool())
        counts["after_release"] = _thread_count()
        _parallel_work()  # a later parallel operator still runs: a new pool is built
        counts["rebuilt"] = _thread_count()
        with releasing_thread_pool():
            _parallel_work()
        counts["after_block"] = _thread_count()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    workers = torch.get_num_threads() - 1
    assert counts["released"] == 1
    assert counts["after_release"] == counts["after_work"] - workers
    assert counts["rebuilt"] == counts["after_work"]
    assert counts["after_block"] == counts["after_release"]


def test_the_engine_thread_idles_without_workers() -> None:
    """The scheduler frees its pool once no request is left, so it holds no idle workers."""
    from ctxproto.runtime import Engine, GenerationParams

    with Engine(prefix_cache=False, max_batch_size=1) as engine:
        before = _thread_count()  # the loading thread released its own workers
        engine.generate(
            [{"role": "user", "content": "Say hi."}], GenerationParams(max_new_tokens=2)
        )
        deadline = threading.Event()
        for _ in range(50):  # the scheduler releases right after its last reply
            if _thread_count() == before + 1:  # the scheduler thread itself, alone
                break
            deadline.wait(0.05)
        assert _thread_count() == before + 1
