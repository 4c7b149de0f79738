"""ctxproto's own CPU kernels: C++ torch operators built on this machine at first use.

torch has no kernel for float32 rows times weights kept as 4-bit GGUF blocks
(``packed_linear``), and its attention kernels leave a core idle on a decode step
over 3 KV heads (``runtime/attention.py``), so ctxproto ships the C++ source
(``ctxproto/models/csrc/*.cpp``) and builds it with torch's extension builder
the first time a model could use it: a few seconds, once per machine and torch
version, into ``cache_dir()/kernels``. The build targets this CPU
(``-march=native``), so the folder is keyed by the CPU's model and features as
well: a cache shared between machines does not hand one CPU another's
instructions.

Building needs a C++ compiler with OpenMP and ninja (the ``runtime`` extra
installs ninja), and the kernels pay only with vector instructions: AVX-512, or
AVX2 with FMA (``csrc/simd.h``). When the build fails, ``load_kernels`` says why
once, in a warning (a compiler can be installed), and returns False; on a CPU
with neither, nothing can be done about it, so it says so once in the log at
INFO rather than in a warning that a test suite or an application running with
warnings as errors would fail on. Either way every caller then keeps torch's own
layers and attention.
The operators are threaded with torch's ``at::parallel_for``, so they run on
torch's OpenMP workers (``openmp.py``) rather than a pool of their own.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import logging
import os
import platform
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any

from ctxproto._extras import require
from ctxproto.models.cpu_info import read_cpuinfo
from ctxproto.models.loader import cache_dir

__all__ = ["kernel_lanes", "load_kernels"]

_SOURCES = Path(__file__).with_name("csrc")
_NAME = "ctxproto_kernels"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]
"""``-ffp-contract=off``: a product and a sum the kernels keep apart must not fuse."""

_building = threading.Lock()
_log = logging.getLogger(__name__)


@functools.cache
def load_kernels() -> bool:
    """Build (first time) and load the ``torch.ops.ctxproto`` operators; False if not possible.

    False also where they were built with neither AVX-512 nor AVX2 and FMA: their
    plain loops are slower than torch's own kernels, which the callers then keep.
    """
    with _building:  # a second thread waits here, then finds the operators loaded
        torch = require("torch", extra="runtime")
        try:
            _build_and_load(torch)
        # SubprocessError: torch asks the compiler for its version itself, and a
        # compiler that answers with an error (``CXX`` naming a broken wrapper)
        # fails there, before the build that would turn it into a RuntimeError.
        except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as exc:
            return _decline(f"could not be built ({exc})")
        if _vector_width(torch) == 0:
            _log.info(
                "ctxproto's CPU kernels need AVX2 (with FMA) or AVX-512, which this CPU "
                "lacks; models keep torch's kernels, which decode slower"
            )
            return False
        return True


@functools.cache
def kernel_lanes() -> int:
    """Floats per vector of the loaded kernels: 16 (AVX-512), 8 (AVX2 and FMA), or 0
    where they are not used. How many rows they beat torch's kernels on depends on it."""
    if not load_kernels():
        return 0
    return _vector_width(require("torch", extra="runtime"))


def _vector_width(torch: Any) -> int:
    """Floats per vector the loaded kernels were compiled for: 16 (AVX-512), 8 (AVX2
    and FMA), or 0 for their plain loops."""
    return int(torch.ops.ctxproto.vector_width())


def _build_and_load(torch: Any) -> None:
    if hasattr(torch.ops.ctxproto, "vector_width"):  # loaded before, in this process
        return
    sources = sorted(str(path) for path in _SOURCES.glob("*.cpp"))
    if not sources:
        raise OSError(f"no C++ sources in {_SOURCES}")
    build = cache_dir() / "kernels" / f"torch{torch.__version__}-{_cpu_tag()}"
    build.mkdir(parents=True, exist_ok=True)
    _put_ninja_on_path()
    cpp_extension = require("torch.utils.cpp_extension", extra="runtime")
    # torch's builder guards the folder with a lock file that a killed build leaves
    # behind, and then waits for it forever. Our own lock is an flock, which the
    # system releases when its holder dies: whoever holds it is the only builder,
    # so a torch lock found then is stale.
    with (build / "ctxproto.lock").open("a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        (build / "lock").unlink(missing_ok=True)
        cpp_extension.load(
            name=_NAME,
            sources=sources,
            extra_cflags=_FLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build),
            is_python_module=False,
            verbose=False,
        )


def _decline(why: str) -> bool:
    warnings.warn(
        f"ctxproto's CPU kernels {why}; models keep torch's kernels, which decode slower",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


def _cpu_tag() -> str:
    """A short digest of this machine's architecture, CPU model and features."""
    keys = ("flags", "model name", "Features", "CPU part", "CPU implementer")
    fields = read_cpuinfo()
    lines = [f"{key}: {fields[key]}" for key in keys if key in fields]
    described = "\n".join([platform.machine(), platform.processor(), *lines])
    return hashlib.sha256(described.encode()).hexdigest()[:12]


def _put_ninja_on_path() -> None:
    """The ``ninja`` package's binary on ``PATH`` when no ninja is there (a venv's bin
    often is not); torch's builder runs ``ninja`` by name."""
    if shutil.which("ninja"):
        return
    try:
        ninja = importlib.import_module("ninja")
    except ImportError:  # the build will say that ninja is missing
        return
    os.environ["PATH"] = os.pathsep.join([str(ninja.BIN_DIR), os.environ.get("PATH", "")])
