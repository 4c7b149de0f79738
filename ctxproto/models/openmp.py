"""Handing a thread's OpenMP workers back, so the engine's workers keep spinning.

torch runs its parallel CPU operators on OpenMP (GNU libgomp in the Linux wheels).
Every thread that runs one gets a pool of worker threads of its own, kept until
the thread exits. Between two parallel regions libgomp's idle workers spin for a
while before they sleep, so the next region starts at once; but as soon as the
process holds more OpenMP threads than there are CPUs, libgomp spins only a few
microseconds and the workers sleep after every region, to be woken through the
kernel for the next. A decode step of SmolLM2-135M runs about 240 parallel
regions (one per linear layer split over the cores and one per attention), so
the wake-ups add up: at a 3.1k-token context the same step took 46 ms on the
thread that loaded the model and 60-75 ms on the engine's scheduler thread, whose
pool was the second one in the process.

So every thread that runs torch work on ctxproto's behalf outside the engine's
scheduler (loading a model, embedding texts, scoring tokens) hands its workers
back when it is done, and the scheduler hands its own back before it idles.
``omp_pause_resource_all`` (OpenMP 5.0) frees the calling thread's pool; the
next parallel region on that thread builds a new one, which costs one thread
start per worker (tens of microseconds), nothing against a model call.

Torch work in the application's own threads is not ours to release; an
application that runs it next to the engine can call ``release_thread_pool``
itself (docs/runtime.md, "OpenMP worker threads").
"""

from __future__ import annotations

import ctypes
import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["release_thread_pool", "releasing_thread_pool"]

_OMP_PAUSE_HARD = 2
"""``omp_pause_hard`` of ``omp_pause_resource_t``: free the threads, not only idle them."""

_OPENMP_LIBRARY = re.compile(r"/lib(?:g|i)?omp[^/]*\.so[^/]*$")
"""libgomp (GNU), libomp (LLVM) or libiomp5 (Intel), as mapped into this process."""


def release_thread_pool() -> bool:
    """Free the calling thread's OpenMP worker threads; False where that is not possible.

    Not possible: no OpenMP runtime is loaded (torch not imported yet, or a build
    without OpenMP), the runtime predates OpenMP 5.0, or the caller is inside a
    parallel region.
    """
    pause = _pause_function()
    return pause is not None and pause(_OMP_PAUSE_HARD) == 0


@contextmanager
def releasing_thread_pool() -> Iterator[None]:
    """Run the body, then free this thread's OpenMP workers, even if the body raised."""
    try:
        yield
    finally:
        release_thread_pool()


@functools.cache
def _pause_function() -> ctypes._NamedFuncPointer | None:
    library = _loaded_openmp_library()
    if library is None:
        return None
    try:
        pause = ctypes.CDLL(library).omp_pause_resource_all
    except (OSError, AttributeError):
        return None
    pause.argtypes = [ctypes.c_int]
    pause.restype = ctypes.c_int
    return pause


def _loaded_openmp_library() -> str | None:
    """The OpenMP runtime torch loaded, from this process's memory map (Linux only)."""
    try:
        import torch  # noqa: F401  (maps the runtime torch links against)
    except ImportError:
        return None
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    for line in maps.read_text(encoding="utf-8", errors="replace").splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if _OPENMP_LIBRARY.search(path):
            return path
    return None
