"""Per-call wall times, shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["call_times_ms"]


def call_times_ms(
    call: Callable[[Any], Any], items: Sequence[Any], *, warm_up: int = 0
) -> npt.NDArray[np.float64]:
    """Milliseconds of ``call(item)`` for each item, after ``warm_up`` untimed calls."""
    for item in items[:warm_up]:
        call(item)
    times = []
    for item in items:
        start = time.perf_counter()
        call(item)
        times.append((time.perf_counter() - start) * 1000.0)
    return np.asarray(times)
