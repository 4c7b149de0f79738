"""The README's LangChain and LlamaIndex examples run as written, with the bundled LM."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL))


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize("heading", ["Use it in LangChain", "Use it in LlamaIndex"])
def test_readme_example_runs(heading, tmp_path, monkeypatch, capsys):
    code = _python_blocks(heading)
    assert code
    monkeypatch.chdir(tmp_path)  # the example's store folder lands here
    namespace: dict[str, object] = {}
    exec(compile(code, f"README.md ({heading})", "exec"), namespace)
    if heading == "Use it in LangChain":
        assert len(namespace["history"].messages) == 2  # type: ignore[attr-defined]
    else:
        assert capsys.readouterr().out.strip()
