"""``ctxproto eval``'s command line: strict JSON on stdout, and options checked before
anything loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctxproto.cli.main import main

ROOT = Path(__file__).parents[2]
MINIMAL = str(ROOT / "examples" / "pipelines" / "minimal.yaml")
TINY_NEEDLE = ["--dataset", "needle", "--context-lengths", "600", "--depths", "0", "--no-logprob"]


def refuse(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def test_json_prints_null_for_a_figure_that_is_not_a_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctxproto.eval.report import EvalReport

    summary = EvalReport.summary

    def with_nan(self: EvalReport) -> dict[str, Any]:
        figures = summary(self)
        figures["baseline"]["logprob_delta_mean"] = float("nan")
        return figures

    monkeypatch.setattr(EvalReport, "summary", with_nan)
    code = main(["eval", MINIMAL, *TINY_NEEDLE, "--out", str(tmp_path / "o"), "--json"])
    assert code == 0
    out = capsys.readouterr().out
    assert json.loads(out, parse_constant=refuse)["baseline"]["logprob_delta_mean"] is None
