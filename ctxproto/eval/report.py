"""The evaluation report: ``report.json``, ``report.md`` and the plots, in one folder.

``report.json`` holds ``dataset``, ``settings``, ``partial``, ``baseline``
(aggregates), ``pipelines`` (name -> aggregates) and ``items`` (one row per item
and system); ``summary()`` is the same without the rows, which ``ctxproto eval
--json`` prints. Every file is written atomically. A partial report is that of a
run stopped early: its rows are those of the items that finished.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctxproto.errors import StoreError
from ctxproto.eval.aggregate import aggregate, grid
from ctxproto.eval.runner import BASELINE
from ctxproto.stores.atomic import atomic_write_text

__all__ = ["REPORT_FILES", "EvalReport"]

REPORT_FILES = (
    "report.json",
    "report.md",
    "quality_vs_compression.png",
    "retention_heatmap.png",
)
"""Every file ``EvalReport.write`` may write: what a rerun into the folder replaces."""

Row = dict[str, Any]

_COLUMNS = (
    ("compression_ratio", "ratio", "{:.2f}x"),
    ("prompt_tokens", "prompt tok", "{:.0f}"),
    ("original_tokens", "original tok", "{:.0f}"),
    ("answer_retention", "answer ret.", "{:.1%}"),
    ("logprob_retention", "logprob ret.", "{:.1%}"),
    ("logprob_delta_mean", "logprob Δ", "{:+.2f}"),
    ("reader_em", "reader EM", "{:.1%}"),
    ("reader_f1", "reader F1", "{:.2f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p95_ms", "p95 ms", "{:.1f}"),
    ("tokens_per_s", "tok/s", "{:,.0f}"),
    ("errors", "errors", "{}"),
)


TERMINAL_COLUMNS = (
    "compression_ratio",
    "answer_retention",
    "logprob_retention",
    "reader_em",
    "p50_ms",
)
"""The columns ``ctxproto eval`` prints; report.md has all of ``_COLUMNS``."""


class EvalReport:
    """Rows of one evaluation run, with their aggregates per system."""

    def __init__(
        self,
        rows: Sequence[Row],
        *,
        dataset: dict[str, Any],
        settings: dict[str, Any],
        partial: bool = False,
    ) -> None:
        self.rows = list(rows)
        self.dataset = dataset
        self.settings = settings
        self.partial = partial
        """Whether the run stopped before every item of ``dataset["items"]`` finished."""
        self.systems: list[str] = list(dict.fromkeys(row["system"] for row in self.rows))

    def rows_of(self, system: str) -> list[Row]:
        return [row for row in self.rows if row["system"] == system]

    def aggregates(self) -> dict[str, dict[str, Any]]:
        """Aggregates per system, the baseline first."""
        return {system: aggregate(self.rows_of(system)) for system in self.systems}

    def summary(self) -> dict[str, Any]:
        """What ``--json`` prints: dataset, settings, baseline and pipelines."""
        aggregates = self.aggregates()
        return {
            "dataset": self.dataset,
            "settings": self.settings,
            "partial": self.partial,
            "baseline": aggregates.get(BASELINE),
            "pipelines": {k: v for k, v in aggregates.items() if k != BASELINE},
        }

    def failures(self) -> list[str]:
        """One line per system whose pipeline or reader failed on items, with the first error.

        The tables show a failed item only as lost quality: a pipeline whose budget
        is smaller than its system prompt read as 0 % retention, and a reader whose
        server was down as an empty reader column, with no word of why.
        """
        lines = []
        for system in self.systems:
            rows = self.rows_of(system)
            for key, what in (("error", "the pipeline"), ("reader_error", "the reader")):
                failed = [row[key] for row in rows if key in row]
                if failed:
                    lines.append(
                        f"{system}: {what} failed on {len(failed)} of {len(rows)} items "
                        f"(first: {failed[0]})"
                    )
        return lines

    def write(self, folder: Path) -> list[Path]:
        """Write report.json, report.md and the plots; the paths written.

        The files of an earlier run in ``folder`` are removed first, so a plot this
        run does not draw (the heatmap of a needle run, rerun on a JSONL file) is
        never left behind to pass for this run's. Then report.json, the record the
        other files are drawn from, is written before them: a plot that cannot be
        drawn (no matplotlib) or a run stopped while writing still leaves this
        run's results, and never beside an earlier run's files. A folder that
        refuses them (a full disk, a directory where a file goes) is a
        ``StoreError`` naming it.
        """
        try:
            return self._write(folder)
        except OSError as exc:  # a full disk, a folder in a file's place: said, not a traceback
            raise StoreError(f"cannot write the report to {folder}: {exc.strerror}") from exc

    def _write(self, folder: Path) -> list[Path]:
        from ctxproto.eval.plots import plot_quality_vs_compression, plot_retention_heatmap

        folder.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            (folder / name).unlink(missing_ok=True)
        report_json, report_md = folder / "report.json", folder / "report.md"
        atomic_write_text(
            report_json,
            json.dumps({**self.summary(), "items": self.rows}, indent=2, ensure_ascii=False),
        )
        plots = [plot_quality_vs_compression(self, folder / "quality_vs_compression.png")]
        heatmap = plot_retention_heatmap(self, folder / "retention_heatmap.png")
        if heatmap is not None:
            plots.append(heatmap)
        atomic_write_text(report_md, self.markdown([p.name for p in plots]))
        return [report_json, report_md, *plots]

    def cells(self, keys: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
        """Column titles and each system's cells for ``keys``, formatted as in report.md."""
        spec = {key: (title, fmt) for key, title, fmt in _COLUMNS}
        titles = [spec[key][0] for key in keys]
        rows = {
            system: [_cell(values.get(key), spec[key][1]) for key in keys]
            for system, values in self.aggregates().items()
        }
        return titles, rows

    def markdown(self, plots: Sequence[str] = ()) -> str:
        """The aggregate table, the retention grid per system, the dataset's problems."""
        aggregates = self.aggregates()
        lines = [f"# ctxproto eval: {self.dataset.get('name')}", ""]
        if self.partial:
            lines += [
                f"**Partial:** the run stopped after {len(self.rows_of(BASELINE))} of "
                f"{self.dataset.get('items')} items; `ctxproto eval` with the same "
                "options and `--resume` finishes it.",
                "",
            ]
        lines += [
            "Settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
            "",
            "| system | " + " | ".join(title for _, title, _ in _COLUMNS) + " |",
            "|---|" + "---:|" * len(_COLUMNS),
        ]
        for system, values in aggregates.items():
            cells = [_cell(values.get(key), fmt) for key, _, fmt in _COLUMNS]
            lines.append(f"| {_table_text(system)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Items: {len(self.rows_of(BASELINE))}; {self._logprob_note(aggregates)}. "
            "Compression ratio = total original tokens / total prompt tokens.",
        ]
        for system in self.systems:
            lines += _grid_table(system, self.rows_of(system))
        failures = self.failures()
        if failures:
            lines += ["", "## Failures", ""] + [f"- {line}" for line in failures]
        problems = self.dataset.get("problems") or []
        if problems:
            lines += ["", "## Dataset problems (skipped)", ""]
            lines += [f"- {problem}" for problem in problems]
        if plots:
            lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
        return "\n".join(lines) + "\n"

    def _logprob_note(self, aggregates: dict[str, dict[str, Any]]) -> str:
        """How many items the log-probability was scored on, or that it was not scored.

        A run without the scorer (``--no-logprob``, no ``runtime`` extra) has no
        ``logprob`` in any row; "scored on 0 (prompts within the scoring limit)"
        told its reader that every prompt had been too long.
        """
        if not any("logprob" in row for row in self.rows):
            return "log-probability not scored"
        scored = aggregates.get(BASELINE, {}).get("logprob_items", 0)
        return f"log-probability scored on {scored} (prompts within the scoring limit)"


def _table_text(text: str) -> str:
    """``text`` as one cell of a Markdown table, or on one heading line.

    A pipeline's name is free text: a ``|`` in it ("bm25 | top-5") split its row
    into one cell too many, shifting every figure after it under the wrong
    column, and a line break ended the row.
    """
    return " ".join(text.split()).replace("|", "\\|")


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _grid_table(system: str, rows: Sequence[Row]) -> list[str]:
    cells = grid(rows)
    if not cells:
        return []
    depths = sorted({depth for depth, _ in cells})
    lengths = sorted({length for _, length in cells})
    lines = [
        "",
        f"### Answer retention by needle depth x context length: {_table_text(system)}",
        "",
        "| depth \\ length | " + " | ".join(str(n) for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for depth in depths:
        values = [_cell(cells.get((depth, n)), "{:.0%}") for n in lengths]
        lines.append(f"| {depth}% | " + " | ".join(values) + " |")
    return lines
