"""Shared fixtures: every model loads once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The server fixtures (``postgres``, ``pg_url``, ``redis_server``) live in their own modules.
pytest_plugins = ["tests.servers_postgres", "tests.servers_redis"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_runs_kernels() -> bool:
    """Whether this CPU has the vector instructions ctxproto's CPU kernels are written
    for (``ctxproto/models/csrc/simd.h``): AVX-512, or AVX2 with FMA."""
    features = _cpu_features()
    return "avx512f" in features or {"avx2", "fma"} <= features


def _cpu_features() -> set[str]:
    from ctxproto.models.cpu_info import cpu_features, read_cpuinfo

    return set(cpu_features(read_cpuinfo()) or ())


needs_kernel_cpu = pytest.mark.skipif(
    not cpu_runs_kernels(),
    reason="ctxproto's CPU kernels run on CPUs with AVX-512, or AVX2 and FMA, only",
)
"""For tests of the kernels (``ctxproto/models/kernels.py``). Where the CPU has
the instructions they must build and load, so a broken build fails the tests there."""

needs_avx512 = pytest.mark.skipif(
    not cpu_runs_kernels() or "avx512f" not in _cpu_features(),
    reason="ctxproto's kernels take prefills in pieces with AVX-512 only",
)
"""For what the kernels do with 16 floats a vector only (``PACKED_ROWS``)."""


@pytest.fixture(scope="session")
def counter() -> Any:
    from ctxproto.tokens import get_counter

    return get_counter()


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The embedded all-MiniLM-L6-v2, shared by every test."""
    from ctxproto.models.embedder import get_embedder

    return get_embedder()


@pytest.fixture(scope="session")
def lm() -> Any:
    """The embedded SmolLM2-135M-Instruct on CPU (float32), shared by every test."""
    from ctxproto.models.loader import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="session")
def fused(lm) -> Any:
    """The engine's copy of ``lm``: packed products, fused decoder layers (with the kernels)."""
    from ctxproto.runtime.engine import engine_model

    return engine_model(lm, "none")


@pytest.fixture(scope="session")
def unfused(lm) -> Any:
    """The engine's copy of ``lm`` with transformers' decoder layers back in place."""
    from ctxproto.runtime.engine import engine_model

    model = engine_model(lm, "none")
    layers = model.model.layers
    for index, layer in enumerate(layers):
        layers[index] = getattr(layer, "layer", layer)
    return model


def record_unfused_rows(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each forward that model's first decoder layer runs through
    transformers' own layer (the one a fused layer wraps), from now on."""
    first = model.model.layers[0]
    wrapped = getattr(first, "layer", first)
    original = wrapped.forward
    rows: list[int] = []

    def recording(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        rows.append(hidden_states.shape[1])
        return original(hidden_states, *args, **kwargs)

    monkeypatch.setattr(wrapped, "forward", recording)
    return rows


@pytest.fixture(scope="session")
def lm_tokenizer() -> Any:
    from ctxproto.models.loader import load_tokenizer

    return load_tokenizer()


class Unprivileged:
    """Runs Python as a user that file permissions bind: root ignores them, so a test
    of a read-only folder runs its check as ``nobody`` (through ``setpriv``) when the
    suite runs as root. ``folder`` is a fresh folder that user can read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def run(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", code, *args]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
        environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        return subprocess.run(
            command, capture_output=True, text=True, timeout=300, env=environment, check=False
        )

    @staticmethod
    def make_read_only(path: Path) -> None:
        for child in [path, *path.rglob("*")]:
            child.chmod(0o555 if child.is_dir() else 0o444)


@pytest.fixture
def unprivileged() -> Iterator[Unprivileged]:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only to us")
    folder = Path(tempfile.mkdtemp(prefix="ctxproto-ro-"))
    folder.chmod(0o755)
    try:
        yield Unprivileged(folder)
    finally:
        for child in [folder, *folder.rglob("*")]:
            child.chmod(0o755 if child.is_dir() else 0o644)
        shutil.rmtree(folder)
