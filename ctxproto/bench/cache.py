"""``ctxproto bench cache [--json]``: semantic-cache accuracy on hard negatives, and speed.

- ``accuracy``: the held-out test split of ``tests/fixtures/cache_pairs/``
  (paraphrases, near-repeats and near misses by category; see
  ``ctxproto.bench.cache_pairs``) and the test split of the older hand-written
  pairs (``tests/fixtures/semantic_cache_pairs.jsonl``), and ``independent``:
  pairs written later by other writers, in the same categories but not the
  same hand; the learned verifier was fitted on none of them (the slot rules
  were revised once after reading the independent split's false hits, see
  ``docs/benchmarks.md``). For each pair the first question is cached and the
  second asked, through the real ``SemanticCache``. Side by side in the same
  run: the rules guard, the learned guard and plain cosine at 0.8 (GPTCache's
  default similarity threshold). Per category: hit rate (recall for paraphrases and
  near-repeats, false-hit rate for near misses). ``test_other_questions``
  pairs every two different seed questions of one domain in the test split
  ("cancel my subscription" / "delete my account"): every pair should miss,
  and a guard fitted on near misses alone can read them as rewordings.
- ``speed``: lookup latency with ``--entries`` entries in one namespace (the
  worst case: one scope holds them all). Filler entries carry random normalized
  vectors (stated as such) so filling does not embed 100k texts; real questions
  are then cached and looked up by paraphrase (hits) and by unrelated questions
  (misses). Query embeddings are computed beforehand (memoized), so the figures
  exclude embedding the query, as the retrieval benchmark does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ctxproto.bench.machine import print_figures
from ctxproto.bench.timing import call_times_ms
from ctxproto.cli.arguments import int_at_least
from ctxproto.errors import ConfigError, DatasetError
from ctxproto.stores.semantic_cache.cache import GUARDS, Guard

__all__ = ["register", "run"]

GPTCACHE_DEFAULT_THRESHOLD = 0.8
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
SHOULD_HIT = ("paraphrase", "near_repeat")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("cache", help="semantic cache hard-negative accuracy and speed")
    parser.add_argument(
        "--entries", type=int_at_least(1), default=100_000, help="cache entries the speed runs on"
    )
    parser.add_argument(
        "--pairs", default=str(FIXTURES), help="folder holding cache_pairs/ and the older pairs"
    )
    parser.add_argument(
        "--guard", choices=GUARDS, default="learned", help="the guard the speed figures run with"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    pairs = Path(args.pairs)
    if not pairs.is_dir():
        raise ConfigError(
            f"{pairs} is not a folder",
            key="--pairs",
            expected="the folder holding cache_pairs/ and semantic_cache_pairs.jsonl",
        )
    result = run(entries=args.entries, pairs=pairs, guard=args.guard)
    return print_figures(result, as_json=args.json)


def run(*, entries: int, pairs: Path, guard: Guard = "learned") -> dict[str, Any]:
    from ctxproto.bench.cache_verifier import other_question_pairs
    from ctxproto.models.embedder import get_embedder

    test = _read(pairs / "cache_pairs" / "test.jsonl")
    splits = {
        "test": test,
        "independent": _read(pairs / "cache_pairs" / "independent.jsonl"),
        "old_test": [
            r for r in _read(pairs / "semantic_cache_pairs.jsonl") if r["split"] == "test"
        ],
        "test_other_questions": other_question_pairs(test),
    }
    rows = [r for split in splits.values() for r in split]
    get_embedder().embed([r["a"] for r in rows] + [r["b"] for r in rows])
    return {"accuracy": _accuracy(splits), "speed": speed(splits["test"], entries, guard=guard)}


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DatasetError(f"labelled pairs not found: {path}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _accuracy(splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from ctxproto.stores.semantic_cache import SemanticCache

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        variants = {
            "rules_guard": SemanticCache(Path(folder) / "rules", guard="rules"),
            "learned_guard": SemanticCache(Path(folder) / "learned", guard="learned"),
            "cosine_0.8_gptcache_default": SemanticCache(
                Path(folder) / "plain08", threshold=GPTCACHE_DEFAULT_THRESHOLD, guard="off"
            ),
        }
        for split, rows in splits.items():
            out[split] = {name: _score(cache, rows, split) for name, cache in variants.items()}
    return out


def _score(cache: Any, rows: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for n, row in enumerate(rows):
        namespace = f"{tag}-{n}"
        cache.put(row["a"], "cached", namespace=namespace)
        hits[row["category"]] += cache.get(row["b"], namespace=namespace) is not None
        totals[row["category"]] += 1
    should_hit = [c for c in totals if c in SHOULD_HIT]
    negatives = [c for c in totals if c not in SHOULD_HIT]
    true_hits = sum(hits[c] for c in should_hit)
    false_hits = sum(hits[c] for c in negatives)
    rate = {c: round(hits[c] / totals[c], 4) for c in sorted(totals)}
    return {
        "recall": round(true_hits / max(1, sum(totals[c] for c in should_hit)), 4),
        "false_hit_rate": round(false_hits / max(1, sum(totals[c] for c in negatives)), 4),
        "worst_category_false_hit_rate": max((rate[c] for c in negatives), default=0.0),
        "precision": round(true_hits / max(1, true_hits + false_hits), 4),
        "hit_rate_by_category": rate,
        "pairs_by_category": dict(sorted(totals.items())),
    }


def speed(
    rows: list[dict[str, Any]],
    entries: int,
    location: str | None = None,
    *,
    guard: Guard = "learned",
) -> dict[str, Any]:
    """Lookup latency with ``entries`` entries in a cache at ``location`` (a temporary
    folder), verification by ``guard`` included."""
    if location is None:
        with tempfile.TemporaryDirectory() as folder:
            return speed(rows, entries, folder, guard=guard)
    from ctxproto.stores.semantic_cache import SemanticCache

    rng = np.random.default_rng(0)
    paraphrases = [r for r in rows if r["category"] == "paraphrase"]
    misses = [r["b"] for r in rows if r["category"] not in SHOULD_HIT]
    cache = SemanticCache(location)
    dimension = cache.embedder.dimension
    start = time.perf_counter()
    for i in range(entries):
        vector = rng.standard_normal(dimension).astype(np.float32)
        cache.put_embedded(f"filler question {i}", vector / np.linalg.norm(vector), f"a{i}")
    fill = time.perf_counter() - start
    for row in paraphrases:
        cache.put(row["a"], "cached")
    start = time.perf_counter()
    fresh = SemanticCache(location, guard=guard)
    fresh.get("warm-up question")
    load = time.perf_counter() - start
    hit_ms = call_times_ms(fresh.get, [r["b"] for r in paraphrases])
    miss_ms = call_times_ms(fresh.get, misses)
    hits = sum(fresh.get(r["b"]) is not None for r in paraphrases)
    cache.close()
    fresh.close()
    return {
        "guard": fresh.guard,
        "entries": len(fresh),
        "filler": "random normalized vectors (not embedded text)",
        "fill_puts_per_second": round(entries / fill),
        "open_and_mirror_seconds": round(load, 2),
        "lookup_p50_ms_hit": round(float(np.percentile(hit_ms, 50)), 3),
        "lookup_p50_ms_miss": round(float(np.percentile(miss_ms, 50)), 3),
        "lookup_p50_ms": round(float(np.percentile(np.concatenate([hit_ms, miss_ms]), 50)), 3),
        "lookup_p95_ms": round(float(np.percentile(np.concatenate([hit_ms, miss_ms]), 95)), 3),
        "paraphrase_hits": hits,
        "paraphrases_asked": len(paraphrases),
    }
