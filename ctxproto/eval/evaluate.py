"""``evaluate``: the whole evaluation in one call, as ``ctxproto eval`` runs it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ctxproto.errors import DatasetError
from ctxproto.eval.dataset import Dataset
from ctxproto.eval.logprob import AnswerLogprobScorer
from ctxproto.eval.readers import Reader
from ctxproto.eval.report import EvalReport
from ctxproto.eval.runner import DEFAULT_LOGPROB_TOLERANCE, Evaluator
from ctxproto.pipeline import Pipeline

__all__ = ["evaluate"]

Progress = Callable[[int, int], None]
"""Called with (steps done, total steps); a step is one item through one system."""


def evaluate(
    pipelines: Sequence[Pipeline],
    dataset: Dataset,
    *,
    limit: int | None = None,
    scorer: AnswerLogprobScorer | None = None,
    reader: Reader | None = None,
    logprob_tolerance: float = DEFAULT_LOGPROB_TOLERANCE,
    settings: dict[str, Any] | None = None,
    on_progress: Progress | None = None,
) -> EvalReport:
    """Run ``dataset`` through the baseline and ``pipelines``; the report of every row.

    ``report.write(folder)`` writes report.json, report.md and the plots;
    ``report.summary()`` is the aggregate mapping ``--json`` prints. A dataset
    that yields no item is a ``DatasetError``.
    """
    evaluator = Evaluator(
        pipelines, scorer=scorer, reader=reader, logprob_tolerance=logprob_tolerance
    )
    evaluator.warm_up()
    items = list(dataset.items(limit))
    if not items:
        # Else an empty report: no row, so no system, not even the pipelines asked for.
        raise DatasetError(f"dataset '{dataset.name}' has no item to evaluate")
    total = len(items) * len(evaluator.systems)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    if on_progress is not None:
        on_progress(0, total)
    rows = [row for item in items for row in evaluator.evaluate(item, on_step=step)]
    settings = {
        **(settings or {}),
        "limit": limit,
        "reader": reader.name if reader is not None else None,
        "logprob_max_tokens": scorer.max_tokens if scorer is not None else None,
        "logprob_tolerance": round(logprob_tolerance, 4),
    }
    description = {**dataset.describe(), "items": len(items)}
    return EvalReport(rows, dataset=description, settings=settings)
