"""The wheel users install holds the runtime and the stores as ``ctxproto`` sub-packages.

``runtime/`` and ``stores/`` live at the top of the repository and reach the package
through the ``ctxproto/runtime`` and ``ctxproto/stores`` links. A build that skipped a
link would ship a package whose first ``import ctxproto.runtime`` fails, and a build
that picked the folders up as they are would install top-level ``runtime`` and
``stores`` modules (a PyPI package called ``stores`` exists). Both are checked on a real
wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    source = tmp_path_factory.mktemp("source")
    # Build from a copy so that no build/ or egg-info folder lands in the checkout.
    tree = shutil.copytree(
        ROOT,
        source / "ctxproto-src",
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"),
    )
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps"]
    command += ["--no-build-isolation", "--disable-pip-version-check", "-q", "-w", str(out)]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("ctxproto-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_wheel_contains_the_runtime_and_the_stores(wheel_names: set[str]) -> None:
    for expected in (
        "ctxproto/runtime/__init__.py",
        "ctxproto/runtime/engine.py",
        "ctxproto/runtime/backends/__init__.py",
        "ctxproto/stores/__init__.py",
        "ctxproto/stores/semantic_cache/__init__.py",
        "ctxproto/models/__init__.py",
        "ctxproto/text/__init__.py",
        "ctxproto/py.typed",
    ):
        assert expected in wheel_names


def test_the_wheel_carries_every_kernel_source(wheel_names: set[str]) -> None:
    """The kernels are built from source at first use: a missing header fails them all."""
    sources = ROOT / "ctxproto" / "models" / "csrc"
    shipped = {f"ctxproto/models/csrc/{path.name}" for path in sources.iterdir() if path.is_file()}
    assert shipped and shipped <= wheel_names, shipped - wheel_names


def test_the_wheel_installs_no_top_level_runtime_or_stores(wheel_names: set[str]) -> None:
    top_level = {name.split("/")[0] for name in wheel_names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"ctxproto"}
