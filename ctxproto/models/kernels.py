"""ctxproto's own CPU kernels: C++ torch operators built on this machine at first use.

torch has no kernel for float32 rows times weights kept as 4-bit GGUF blocks
(``packed_linear``), and its attention kernels leave a core idle on a decode step
over 3 KV heads (``runtime/attention.py``), so ctxproto ships the C++ source
(``ctxproto/models/csrc/*.cpp``) and builds it with torch's extension builder
the first time a model could use it: a few seconds, once per machine and torch
version, into ``cache_dir()/kernels``. The build targets this CPU
(``-march=native``), so the folder is keyed by the CPU's feature flags as well:
a cache shared between machines never hands one CPU another's instructions.

Building needs a C++ compiler and ninja (the ``runtime`` extra installs ninja).
Without them, or when the build fails, ``load_kernels`` says why once, in a
warning, and returns False: every caller then keeps torch's own float layers.
The operators are threaded with torch's ``at::parallel_for``, so they run on
torch's OpenMP workers (``openmp.py``) rather than a pool of their own.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ctxproto._extras import require
from ctxproto.models.loader import cache_dir

__all__ = ["load_kernels"]

_SOURCES = Path(__file__).with_name("csrc")
_NAME = "ctxproto_kernels"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]
"""``-ffp-contract=off``: a product and a sum the kernels keep apart must not fuse."""


@functools.cache
def load_kernels() -> bool:
    """Build (first time) and load the ``torch.ops.ctxproto`` operators; False if not possible."""
    torch = require("torch", extra="runtime")
    sources = sorted(str(path) for path in _SOURCES.glob("*.cpp"))
    build = cache_dir() / "kernels" / f"torch{torch.__version__}-{_cpu_tag()}"
    try:
        build.mkdir(parents=True, exist_ok=True)
        cpp_extension = require("torch.utils.cpp_extension", extra="runtime")
        with _ninja_on_path():
            cpp_extension.load(
                name=_NAME,
                sources=sources,
                extra_cflags=_FLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=str(build),
                is_python_module=False,
                verbose=False,
            )
    except (OSError, RuntimeError, ImportError) as exc:
        warnings.warn(
            f"ctxproto's CPU kernels could not be built ({exc}); "
            "models keep torch's float layers, which decode slower",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def _cpu_tag() -> str:
    """A short digest of this CPU's model and feature flags (Linux); ``generic`` elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "generic"
    lines = [line for line in text.splitlines() if line.startswith(("flags", "model name"))]
    return hashlib.sha256("\n".join(sorted(set(lines))).encode()).hexdigest()[:12]


@contextmanager
def _ninja_on_path() -> Iterator[None]:
    """The ``ninja`` package's binary on ``PATH`` while building (a venv's bin is often not)."""
    try:
        ninja = importlib.import_module("ninja")
    except ImportError:  # a system ninja may still be there
        yield
        return
    previous = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(ninja.BIN_DIR), previous])
    try:
        yield
    finally:
        os.environ["PATH"] = previous
