"""From per-item rows to the figures a report shows for one system.

- ``compression_ratio`` is total original tokens over total prompt tokens (the
  dataset-level ratio LLMLingua reports), so long items weigh as much as they cost.
- ``answer_retention`` counts an item that failed (a ``BudgetError``, say) as not
  retained: a pipeline cannot look better by failing on hard items.
- ``logprob_retention`` is the share of scored items whose gold-answer
  log-probability dropped by at most the tolerance; ``logprob_delta_mean`` the
  mean change in nats. Both are ``None`` when nothing was scored.
- ``tokens_per_s`` is original tokens processed per second of pipeline time.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import Any

from ctxproto.eval.metrics import percentile

__all__ = ["AGGREGATE_KEYS", "aggregate", "grid"]

AGGREGATE_KEYS = (
    "items",
    "errors",
    "original_tokens",
    "prompt_tokens",
    "compression_ratio",
    "answer_retention",
    "logprob_retention",
    "logprob_delta_mean",
    "logprob_items",
    "reader_em",
    "reader_f1",
    "reader_items",
    "p50_ms",
    "p95_ms",
    "tokens_per_s",
)

Row = dict[str, Any]


def _values(rows: Sequence[Row], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key) is not None]


def _mean(values: Sequence[float]) -> float | None:
    return fmean(values) if values else None


def aggregate(rows: Sequence[Row]) -> dict[str, Any]:
    """The aggregates of one system's rows (keys in ``AGGREGATE_KEYS``)."""
    ok = [row for row in rows if "error" not in row]
    original = sum(row["original_tokens"] for row in ok)
    prompt = sum(row["prompt_tokens"] for row in ok)
    ms = _values(ok, "ms")
    reader = _values(rows, "reader_em")
    logprob = _values(rows, "logprob_retained")
    return {
        "items": len(rows),
        "errors": len(rows) - len(ok),
        "original_tokens": original / len(ok) if ok else None,
        "prompt_tokens": prompt / len(ok) if ok else None,
        "compression_ratio": original / prompt if prompt else None,
        "answer_retention": _mean(_values(rows, "answer_retained")),
        "logprob_retention": _mean(logprob),
        "logprob_delta_mean": _mean(_values(rows, "logprob_delta")),
        "logprob_items": len(logprob),
        "reader_em": _mean(reader),
        "reader_f1": _mean(_values(rows, "reader_f1")),
        "reader_items": len(reader),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "tokens_per_s": original / (sum(ms) / 1000.0) if ms and sum(ms) > 0 else None,
    }


def grid(rows: Sequence[Row], metric: str = "answer_retained") -> dict[tuple[int, int], float]:
    """Mean ``metric`` per (depth percent, context length), for needle-style rows."""
    cells: dict[tuple[int, int], list[float]] = {}
    for row in rows:
        if "depth_percent" not in row or "context_length" not in row:
            continue
        value = row.get(metric)
        if value is not None:
            key = (int(row["depth_percent"]), int(row["context_length"]))
            cells.setdefault(key, []).append(float(value))
    return {key: fmean(values) for key, values in cells.items()}
