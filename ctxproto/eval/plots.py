"""PNG plots of an evaluation, drawn headless (matplotlib's Agg canvas, no pyplot state).

- Quality versus compression ratio: one point per system (the baseline at its
  ratio of 1), for answer retention, log-probability retention and, with a
  reader, reader EM — the trade-off curve LLMLingua papers plot.
- Retention heatmap by needle depth x context length, one panel per system,
  as the NIAH tester's pressure-test charts (only for datasets with depths).
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxproto._extras import require
from ctxproto.eval.aggregate import grid
from ctxproto.stores.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from ctxproto.eval.report import EvalReport

__all__ = [
    "heatmap_figure",
    "plot_quality_vs_compression",
    "plot_retention_heatmap",
    "quality_figure",
]

_METRICS = (
    ("answer_retention", "answer retention", "o"),
    ("logprob_retention", "log-prob retention", "s"),
    ("reader_em", "reader EM", "^"),
)
_TITLE_CHARS = 28
"""Characters of a heatmap panel's title per line."""


def _figure(width: float, height: float) -> Any:
    require("matplotlib", extra="eval")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Constrained layout makes room for the suptitle, the panel titles and the
    # colorbar; with fixed margins they overprinted each other on small grids.
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_quality_vs_compression(report: EvalReport, path: Path) -> Path:
    """Each metric against compression ratio, one labelled point per system."""
    return _save(quality_figure(report), path)


def quality_figure(report: EvalReport) -> Any:
    """The figure ``plot_quality_vs_compression`` saves.

    Each system is named once, at its first point; systems whose points coincide
    (a pipeline that changed nothing sits on the baseline) share one label, where
    separate labels printed over each other into one illegible word.
    """
    figure = _figure(7.0, 4.5)
    axes = figure.add_subplot()
    aggregates = report.aggregates()
    labels: dict[tuple[float, float], list[str]] = {}
    labelled: set[str] = set()
    for index, (key, label, marker) in enumerate(_METRICS):
        points = [
            (values["compression_ratio"], values[key], system)
            for system, values in aggregates.items()
            if values.get(key) is not None and values.get("compression_ratio") is not None
        ]
        if not points:
            continue
        # Filled, then ever larger hollow markers, so points at the same spot stay visible.
        color = f"C{index}"
        axes.scatter(
            [p[0] for p in points],
            [p[1] for p in points],
            s=40 + 70 * index,
            marker=marker,
            facecolors=color if index == 0 else "none",
            edgecolors=color,
            label=label,
        )
        for ratio, value, system in points:
            if system not in labelled:
                labelled.add(system)
                labels.setdefault((ratio, value), []).append(system)
    for (ratio, value), systems in labels.items():
        axes.annotate(", ".join(systems), (ratio, value), textcoords="offset points", xytext=(8, 6))
    axes.set_xlabel("compression ratio (original / prompt tokens)")
    axes.set_ylabel("quality (share of items)")
    axes.set_ylim(-0.05, 1.1)
    axes.set_xlim(left=0.0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    axes.set_title(f"Quality vs compression: {report.dataset.get('name')}")
    return figure


def plot_retention_heatmap(report: EvalReport, path: Path) -> Path | None:
    """Answer retention by depth (rows) x context length (columns), a panel per system."""
    figure = heatmap_figure(report)
    return None if figure is None else _save(figure, path)


def heatmap_figure(report: EvalReport) -> Any | None:
    """The figure ``plot_retention_heatmap`` saves; ``None`` without needle-style rows."""
    grids = {system: grid(report.rows_of(system)) for system in report.systems}
    if not any(grids.values()):
        return None
    depths = sorted({d for cells in grids.values() for d, _ in cells})
    lengths = sorted({n for cells in grids.values() for _, n in cells})
    figure = _figure(3.0 * len(grids) + 1.5, 0.45 * len(depths) + 2.2)
    panels = figure.subplots(1, len(grids), squeeze=False)[0]
    image = None
    for axes, (system, cells) in zip(panels, grids.items(), strict=True):
        matrix = [[cells.get((d, n), float("nan")) for n in lengths] for d in depths]
        image = axes.imshow(matrix, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        axes.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        axes.set_yticks(range(len(depths)), [f"{d}%" for d in depths] if axes is panels[0] else [])
        axes.set_xlabel("context length (tokens)")
        # A panel is ~3 inches: a long name goes on several lines, not over its neighbour's.
        axes.set_title(textwrap.fill(system, _TITLE_CHARS), fontsize=10)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value == value:  # not NaN
                    axes.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=8)
    panels[0].set_ylabel("needle depth")
    figure.colorbar(image, ax=list(panels), label="answer retention")
    figure.suptitle(f"Answer retention by depth x length: {report.dataset.get('name')}")
    return figure
