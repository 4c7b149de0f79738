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

Only GNU libgomp is released, every copy of it mapped into the process (torch,
FAISS and scikit-learn each bring their own, and each counts its own threads).
libgomp's pause frees the calling thread's pool alone; LLVM's and Intel's
runtimes shut down for every thread on a hard pause, which the engine's
scheduler could be inside of, so they are left alone.
"""

from __future__ import annotations

import ctypes
import functools
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["release_thread_pool", "releasing_thread_pool"]

_OMP_PAUSE_HARD = 2
"""``omp_pause_hard`` of ``omp_pause_resource_t``: free the threads, not only idle them."""

_LIBGOMP = re.compile(r"/libgomp[^/]*\.so[^/]*$")
"""GNU libgomp as mapped into this process: torch's own copy, FAISS's, scikit-learn's."""


def release_thread_pool() -> bool:
    """Free the calling thread's OpenMP worker threads; False where that is not possible.

    Not possible: no libgomp is loaded (torch not imported yet, another OpenMP
    runtime, or a platform without ``/proc/self/maps``), or the caller is inside
    a parallel region.
    """
    pauses = [_pause_function(path) for path in _loaded_libgomps(len(sys.modules))]
    results = [pause(_OMP_PAUSE_HARD) == 0 for pause in pauses if pause is not None]
    return bool(results) and all(results)


@contextmanager
def releasing_thread_pool() -> Iterator[None]:
    """Run the body, then free this thread's OpenMP workers, even if the body raised."""
    try:
        yield
    finally:
        release_thread_pool()


@functools.cache
def _pause_function(path: str) -> ctypes._NamedFuncPointer | None:
    try:
        pause = ctypes.CDLL(path).omp_pause_resource_all
    except (OSError, AttributeError):  # not loadable, or older than OpenMP 5.0
        return None
    pause.argtypes = [ctypes.c_int]
    pause.restype = ctypes.c_int
    return pause


@functools.lru_cache(maxsize=1)
def _loaded_libgomps(modules: int) -> tuple[str, ...]:
    """Paths of the libgomp copies this process has mapped (Linux only).

    Reading the memory map takes milliseconds; a new copy comes with an import,
    so the answer is kept until the number of imported modules changes.
    """
    maps = Path("/proc/self/maps")
    try:
        lines = maps.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ()
    fields = (line.split(maxsplit=5) for line in lines)
    paths = {parts[5] for parts in fields if len(parts) == 6}  # the rest map no file
    return tuple(sorted(path for path in paths if _LIBGOMP.search(path)))
