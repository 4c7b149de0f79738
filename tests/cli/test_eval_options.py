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


@pytest.fixture
def no_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading any dataset fail the test: the options must be refused before."""

    def load_dataset(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a dataset was loaded")

    monkeypatch.setattr("ctxproto.eval.dataset.load_dataset", load_dataset)


@pytest.mark.parametrize(
    ("dataset", "option", "value"),
    [
        ("needle", "--turns", "6"),
        ("chat-needle", "--context-lengths", "1000,2000"),
        ("chat-needle", "--depths", "0,50"),
        ("items.jsonl", "--depths", "50"),
        ("items.jsonl", "--turns", "10"),
    ],
)
def test_an_option_of_another_dataset_is_refused_naming_it(
    dataset: str,
    option: str,
    value: str,
    tmp_path: Path,
    no_dataset: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "o"
    args = ["eval", MINIMAL, "--dataset", dataset, "--out", str(out), option, value]
    assert main(args) == 2
    error = capsys.readouterr().err.replace("\n", "")
    assert option in error and "applies to --dataset" in error
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--reader", "bogus"),
        ("--reader", "openai:"),
        ("--context-lengths", ""),
        ("--depths", ","),
    ],
)
def test_a_bad_value_is_refused_before_the_dataset_loads(
    option: str,
    value: str,
    tmp_path: Path,
    no_dataset: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["eval", MINIMAL, "--dataset", "needle", "--out", str(tmp_path / "o"), option, value]
    assert main(args) == 2
    assert f"argument {option}:" in capsys.readouterr().err
