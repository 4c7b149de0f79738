"""``evaluate``: the whole evaluation in one call, as ``ctxproto eval`` runs it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ctxproto.errors import ConfigError, DatasetError
from ctxproto.eval.dataset import Dataset, EvalItem
from ctxproto.eval.logprob import AnswerLogprobScorer
from ctxproto.eval.readers import Reader
from ctxproto.eval.report import EvalReport
from ctxproto.eval.row_log import RowLog, item_fingerprint
from ctxproto.eval.runner import DEFAULT_LOGPROB_TOLERANCE, Evaluator
from ctxproto.pipeline import Pipeline

__all__ = ["EvaluationInterrupted", "evaluate"]

Row = dict[str, Any]
Progress = Callable[[int, int], None]
"""Called with (steps done, total steps); a step is one item through one system."""


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``evaluate``, with the report of the items that finished.

    A ``KeyboardInterrupt`` still, so that code which does not know it stops as
    it would have; ``report`` is marked ``partial``.
    """

    def __init__(self, report: EvalReport) -> None:
        super().__init__()
        self.report = report


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
    rows: RowLog | None = None,
) -> EvalReport:
    """Run ``dataset`` through the baseline and ``pipelines``; the report of every row.

    ``report.write(folder)`` writes report.json, report.md and the plots;
    ``report.summary()`` is the aggregate mapping ``--json`` prints. A dataset
    that yields no item is a ``DatasetError``, a ``limit`` under 1 a
    ``ConfigError``. With ``rows``, each item's rows are written there as the
    item finishes, and the items it already holds are not evaluated again.
    Ctrl-C raises ``EvaluationInterrupted`` with the report of the items that
    finished.
    """
    if limit is not None and limit < 1:
        # A negative limit reached the datasets as a slice end: a JSONL file's or
        # chat-needle's last item was left out without a word.
        raise ConfigError(f"must be at least 1, got {limit}", key="limit")
    evaluator = Evaluator(
        pipelines, scorer=scorer, reader=reader, logprob_tolerance=logprob_tolerance
    )
    evaluator.warm_up()
    items = list(dataset.items(limit))
    if not items:
        # Else an empty report: no row, so no system, not even the pipelines asked for.
        raise DatasetError(f"dataset '{dataset.name}' has no item to evaluate")
    settings = {
        **(settings or {}),
        "limit": limit,
        "reader": reader.name if reader is not None else None,
        "logprob_max_tokens": scorer.max_tokens if scorer is not None else None,
        "logprob_tolerance": round(logprob_tolerance, 4),
    }
    description = {**dataset.describe(), "items": len(items)}
    finished: dict[int, list[Row]] = {}
    if rows is not None:
        _check_items(items, rows)
        finished.update(rows.done)

    def report(*, partial: bool) -> EvalReport:
        # In the dataset's order, whatever order the items finished in.
        in_order = [row for index in sorted(finished) for row in finished[index]]
        return EvalReport(in_order, dataset=description, settings=settings, partial=partial)

    total = len(items) * len(evaluator.systems)
    done = len(finished) * len(evaluator.systems)

    def step() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    if on_progress is not None:
        on_progress(done, total)
    if rows is not None:
        rows.start(settings)
    try:
        for index, item in enumerate(items):
            if index in finished:
                continue
            item_rows = evaluator.evaluate(item, on_step=step)
            # Kept before it is saved: a Ctrl-C or SIGTERM arriving between the two
            # otherwise left the partial report one item short of the rows on disk.
            finished[index] = item_rows
            if rows is not None:
                rows.append(index, item_rows, item_fingerprint(item))
        if rows is not None:
            rows.finish()
    except KeyboardInterrupt:
        raise EvaluationInterrupted(report(partial=True)) from None
    return report(partial=False)


def _check_items(items: Sequence[EvalItem], rows: RowLog) -> None:
    """Refuse rows of items the dataset no longer yields where they were.

    The options match (``RowLog`` checked them), but a dataset can change under
    them: an installed data package upgraded, a ``Dataset`` of one's own.
    """
    for index, item_rows in rows.done.items():
        written = {row["item_id"] for row in item_rows}
        now = items[index].id if index < len(items) else "no item"
        if written != {now}:
            raise DatasetError(
                f"{rows.path} holds rows of {', '.join(sorted(written))} as item {index + 1}, "
                f"where the dataset now has {now}: the data changed since they were written"
            )
        # Generated items are numbered by position: the same id, other data.
        if rows.fingerprints.get(index) not in (None, item_fingerprint(items[index])):
            raise DatasetError(
                f"{rows.path} holds rows of {now} as it was when they were written; the "
                "dataset now gives another item under that id (an installed data package "
                "or ctxproto itself changed): remove the file to start anew"
            )
