"""The module map in docs/architecture.md names every module, so a newcomer can trust it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[str]:
    paths = []
    for top in ("ctxproto", "runtime", "stores"):
        for path in (ROOT / top).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] in (("ctxproto", "runtime"), ("ctxproto", "stores")):
                continue  # the links to runtime/ and stores/, listed under their own names
            if path.name not in ("__init__.py", "__main__.py"):
                paths.append(relative.as_posix())
    return sorted(paths)


def test_the_module_map_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("## Module map") :]
    listed = set(re.findall(r"`([\w/]+\.py)`", section))
    missing = [module for module in _modules() if module not in listed]
    assert not missing, f"add these to docs/architecture.md's module map: {missing}"
    sources = {name for name in listed if name.startswith(("ctxproto/", "runtime/", "stores/"))}
    stale = sorted(sources - set(_modules()))
    assert not stale, f"the module map names modules that do not exist: {stale}"
