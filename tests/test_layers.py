"""The layers import downwards only: a cycle here is how a tidy package decays.

model layer (``ctxproto.models``) <- runtime (``ctxproto.runtime``) <- the wiring layer
(session, serving, CLI, benchmarks, evaluation readers). The core (context model, text
helpers, stages, pipeline, assembler, stores) never imports the runtime; the runtime
imports only the model layer, the error tree, the optional-extra checks and the message
type it renders.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ctxproto"

# Modules that wire a backend to the core, and so may import the runtime.
WIRING = (
    "ctxproto.session",
    "ctxproto.serve",
    "ctxproto.cli",
    "ctxproto.bench",
    "ctxproto.eval.readers",
    "ctxproto.eval.logprob",
    "ctxproto.integrations",
    "ctxproto.mcp",
)
RUNTIME_MAY_IMPORT = (
    "ctxproto.runtime",
    "ctxproto.models",
    "ctxproto.errors",
    "ctxproto._extras",
    "ctxproto.messages",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``ctxproto`` module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name.startswith("ctxproto")}


def _sources() -> dict[str, set[str]]:
    # rglob does not descend into the ctxproto/runtime and ctxproto/stores links on every
    # Python version, so list both trees explicitly.
    files = {path.resolve() for path in PACKAGE.rglob("*.py")}
    for linked in ("runtime", "stores"):
        files.update(path.resolve() for path in (PACKAGE / linked).rglob("*.py"))
    root = PACKAGE.parent
    result = {}
    for path in sorted(files):
        top = path.relative_to(root).parts[0]
        logical = path if top == "ctxproto" else PACKAGE / path.relative_to(root)
        result[_module_name(logical)] = _imports(path)
    return result


SOURCES = _sources()


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_the_source_listing_sees_every_layer() -> None:
    for expected in ("ctxproto.pipeline", "ctxproto.runtime.engine", "ctxproto.stores.atomic"):
        assert expected in SOURCES


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if _within(m, ("ctxproto.runtime",))))
def test_the_runtime_imports_only_the_model_layer_and_errors(module: str) -> None:
    foreign = {name for name in SOURCES[module] if not _within(name, RUNTIME_MAY_IMPORT)}
    assert not foreign, f"{module} imports {sorted(foreign)}"


@pytest.mark.parametrize(
    "module",
    sorted(m for m in SOURCES if not _within(m, ("ctxproto.runtime", *WIRING))),
)
def test_the_core_never_imports_the_runtime(module: str) -> None:
    runtime = {name for name in SOURCES[module] if _within(name, ("ctxproto.runtime",))}
    assert not runtime, f"{module} imports {sorted(runtime)}"


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if _within(m, ("ctxproto.models",))))
def test_the_model_layer_imports_no_higher_layer(module: str) -> None:
    allowed = ("ctxproto.models", "ctxproto.errors", "ctxproto._extras")
    foreign = {name for name in SOURCES[module] if not _within(name, allowed)}
    assert not foreign, f"{module} imports {sorted(foreign)}"
