"""The report folder: what a rerun replaces, and what a run stopped while writing leaves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ctxproto.errors import ModelNotAvailableError
from ctxproto.eval import BASELINE, EvalReport

Row = dict[str, Any]


def row(system: str, item: str, **extra: Any) -> Row:
    return {
        "item_id": item,
        "system": system,
        "original_tokens": 100,
        "prompt_tokens": 50 if system != BASELINE else 100,
        "compression_ratio": 2.0 if system != BASELINE else 1.0,
        "ms": 1.5,
        "answer_retained": 1.0,
        **extra,
    }


def needle_report() -> EvalReport:
    cells = {"depth_percent": 50, "context_length": 600}
    rows = [row(BASELINE, "n-0", **cells), row("small", "n-0", **cells)]
    return EvalReport(rows, dataset={"name": "needle"}, settings={"seed": 0})


def jsonl_report() -> EvalReport:
    rows = [row(BASELINE, "q1"), row("small", "q1")]
    return EvalReport(rows, dataset={"name": "items.jsonl"}, settings={"seed": 0})


def test_a_rerun_leaves_no_plot_of_the_earlier_run(tmp_path: Path) -> None:
    assert (tmp_path / "retention_heatmap.png") in needle_report().write(tmp_path)
    written = jsonl_report().write(tmp_path)
    # The JSONL set has no depths: the needle run's heatmap must not stay next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    assert not (tmp_path / "retention_heatmap.png").exists()
    assert "retention_heatmap" not in (tmp_path / "report.md").read_text("utf-8")


@pytest.mark.parametrize(
    "failure", [KeyboardInterrupt, ModelNotAvailableError("matplotlib is missing")]
)
def test_a_run_stopped_while_writing_keeps_its_results_and_nothing_of_the_earlier_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    needle_report().write(tmp_path)

    def interrupted(*_args: Any) -> None:
        raise failure

    monkeypatch.setattr("ctxproto.eval.plots.plot_quality_vs_compression", interrupted)
    with pytest.raises(type(failure) if isinstance(failure, BaseException) else failure):
        jsonl_report().write(tmp_path)
    # This run's record, after a whole evaluation, is kept; no file of the earlier run is.
    kept = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert kept["dataset"] == {"name": "items.jsonl"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_failures_name_the_system_the_count_and_the_first_error() -> None:
    down = "BackendUnavailableError: connection refused"
    rows = [
        row(BASELINE, "q1", reader_error=down),
        row(BASELINE, "q2", reader_error=down),
        row("small", "q1", reader_em=1.0),
        {"item_id": "q2", "system": "small", "error": "BudgetError: too small"},
    ]
    report = EvalReport(rows, dataset={"name": "items.jsonl"}, settings={})
    assert report.failures() == [
        f"baseline: the reader failed on 2 of 2 items (first: {down})",
        "small: the pipeline failed on 1 of 2 items (first: BudgetError: too small)",
    ]
    assert f"- baseline: the reader failed on 2 of 2 items (first: {down})" in report.markdown()


def test_systems_on_the_same_point_share_one_label() -> None:
    from ctxproto.eval.plots import quality_figure

    unchanged = {"prompt_tokens": 100, "compression_ratio": 1.0}
    rows = [row(BASELINE, "q1"), row("noop", "q1", **unchanged), row("small", "q1")]
    report = EvalReport(rows, dataset={"name": "items.jsonl"}, settings={})
    labels = sorted(text.get_text() for text in quality_figure(report).axes[0].texts)
    # Two labels printed at one spot read as one illegible word.
    assert labels == ["baseline, noop", "small"]


def test_heatmap_titles_overlap_neither_each_other_nor_the_figure_title() -> None:
    from ctxproto.eval.plots import heatmap_figure

    long_name = "recency-window-for-long-support-chats"
    cells = {"depth_percent": 50, "context_length": 600}
    rows = [row(system, "n-0", **cells) for system in (BASELINE, long_name, f"{long_name}-2")]
    figure = heatmap_figure(EvalReport(rows, dataset={"name": "needle"}, settings={}))
    assert figure is not None
    figure.canvas.draw()  # lays the figure out
    renderer = figure.canvas.get_renderer()
    boxes = [figure._suptitle.get_window_extent(renderer)] + [
        axes.title.get_window_extent(renderer) for axes in figure.axes if axes.get_title()
    ]
    assert len(boxes) == 4
    for i, first in enumerate(boxes):
        for second in boxes[i + 1 :]:
            assert not first.overlaps(second)


def test_the_markdown_says_whether_the_log_probability_was_scored() -> None:
    unscored = jsonl_report().markdown()
    assert "log-probability not scored" in unscored and "scored on 0" not in unscored
    too_long = {"logprob": None}  # scorer ran, the prompt was over its limit
    rows = [row(BASELINE, "q1", **too_long), row("small", "q1", **too_long)]
    report = EvalReport(rows, dataset={"name": "items.jsonl"}, settings={})
    assert "log-probability scored on 0 (prompts within the scoring limit)" in report.markdown()


def test_a_pipeline_name_with_a_bar_keeps_its_figures_under_their_columns() -> None:
    """ "bm25 | top-5" split its row of report.md's table into one cell too many."""
    rows = [row(BASELINE, "q1"), row("bm25 | top-5\nv2", "q1")]
    markdown = EvalReport(rows, dataset={"name": "items.jsonl"}, settings={}).markdown()
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| system |"))
    named = next(line for line in lines if line.startswith("| bm25"))
    cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", named)[1:-1]]
    assert len(cells) == header.count("|") - 1
    assert cells[0] == "bm25 \\| top-5 v2" and cells[1] == "2.00x"


def test_a_pipeline_name_with_a_line_break_keeps_its_depth_table_heading_whole() -> None:
    """The heading of a pipeline's depth x length table took its name as written: a
    line break ended the heading and left the rest of the name as a stray line."""
    cells = {"depth_percent": 50, "context_length": 600}
    rows = [row(BASELINE, "n-0", **cells), row("bm25\ntop-5", "n-0", **cells)]
    markdown = EvalReport(rows, dataset={"name": "needle"}, settings={"seed": 0}).markdown()
    assert "length: bm25 top-5" in markdown and "\ntop-5" not in markdown
