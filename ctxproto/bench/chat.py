"""``ctxproto bench chat``: effective tokens per second of a chatbot, with and without ctxproto.

**Effective TPS** is the number of tokens the baseline must process for the
workload — its prompt tokens plus its generated tokens, summed over every turn —
divided by wall-clock seconds. Both paths serve the same conversations, so they
are credited with the same logical tokens, and the ratio of their effective TPS
is the end-to-end speedup: fewer tokens sent, prefixes not recomputed, repeated
questions answered from the cache.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ctxproto.bench.chat_paths import TurnRecord, baseline_turns, ctxproto_turns
from ctxproto.bench.chat_workload import build_workload, examples_dir
from ctxproto.cli.arguments import int_at_least
from ctxproto.errors import ConfigError
from ctxproto.eval.metrics import percentile
from ctxproto.tokens import get_counter

__all__ = ["register", "run_chat_benchmark", "summarize"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chat", help="effective TPS of a multi-session chat: baseline vs ctxproto"
    )
    parser.add_argument("--turns", type=int_at_least(1), default=30, help="user turns per session")
    parser.add_argument("--sessions", type=int_at_least(1), default=2)
    parser.add_argument("--max-new-tokens", type=int_at_least(1), default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, help="write the by-turns plot (PNG) here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    with Progress(transient=True, disable=args.json) as progress:
        result = run_chat_benchmark(
            args.turns, args.sessions, args.max_new_tokens, args.seed, progress=progress
        )
    if args.plot:
        plot_by_turns(result["by_turns"], args.plot)
    summary = {k: v for k, v in result.items() if k != "turns"}
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0


def run_chat_benchmark(
    turns: int,
    sessions: int,
    max_new_tokens: int,
    seed: int,
    *,
    progress: Any = None,
    on_turn: Callable[[TurnRecord, TurnRecord], None] | None = None,
) -> dict[str, Any]:
    """Run both paths on the same workload in this process; returns the figures."""
    for key, value in (
        ("turns", turns),
        ("sessions", sessions),
        ("max_new_tokens", max_new_tokens),
    ):
        if value < 1:
            raise ConfigError(f"must be at least 1, got {value}", key=key)
    examples = examples_dir()
    system_prompt = (examples / "system_prompt.md").read_text(encoding="utf-8")
    scripts = build_workload(sessions, turns, get_counter(), seed=seed)
    total = sum(len(s.turns) for s in scripts)

    task = progress.add_task("serving turns, both ways", total=total) if progress else None
    _warm_up()
    # The two paths take turns, one user turn each, so that whatever else the machine
    # is doing slows both alike and the ratio stays fair.
    cache_stats: dict[str, Any] = {}
    baseline: list[TurnRecord] = []
    ours: list[TurnRecord] = []
    for base, mine in zip(
        baseline_turns(scripts, system_prompt, max_new_tokens),
        ctxproto_turns(scripts, system_prompt, max_new_tokens, examples, cache_stats),
        strict=True,
    ):
        baseline.append(base)
        ours.append(mine)
        if on_turn is not None:
            on_turn(base, mine)
        if task is not None:
            progress.advance(task)
    result = summarize(baseline, ours)
    result.update(
        workload={"sessions": sessions, "turns": turns, "max_new_tokens": max_new_tokens},
        prefix_cache=cache_stats,
        device="cpu",
        turns=[vars(r) for r in ours],
    )
    return result


def summarize(baseline: Sequence[TurnRecord], ours: Sequence[TurnRecord]) -> dict[str, Any]:
    """The benchmark's figures from the two paths' per-turn records."""
    logical = sum(r.prompt_tokens + r.output_tokens for r in baseline)
    base_s = sum(r.seconds for r in baseline)
    ours_s = sum(r.seconds for r in ours)
    served = [r for r in ours if not r.semantic_hit]
    sent = sum(r.prompt_tokens for r in served)
    asks = [r for r in ours if r.fact_in_prompt is not None]
    base_asks = [r for r in baseline if r.fact_answered is not None]
    return {
        "baseline_seconds": round(base_s, 3),
        "ctxproto_seconds": round(ours_s, 3),
        "logical_tokens": logical,
        "effective_tps_baseline": round(logical / base_s, 2),
        "effective_tps_ctxproto": round(logical / ours_s, 2),
        "effective_tps_ratio": round(base_s / ours_s, 3),
        "prefill_tokens_baseline": sum(r.prefill_tokens for r in baseline),
        "prefill_tokens_ctxproto": sum(r.prefill_tokens for r in served),
        "prompt_tokens_baseline": sum(r.prompt_tokens for r in baseline),
        "prompt_tokens_ctxproto": sent,
        "ttft_p50_ms": {"baseline": _p(baseline, 50), "ctxproto": _p(ours, 50)},
        "ttft_p95_ms": {"baseline": _p(baseline, 95), "ctxproto": _p(ours, 95)},
        "prefix_hit_rate": round(1 - sum(r.prefill_tokens for r in served) / sent, 4)
        if sent
        else 0.0,
        "semantic_cache_hit_rate": round(sum(r.semantic_hit for r in ours) / len(ours), 4),
        "fact_retention": _share([r.fact_in_prompt for r in asks]),
        "fact_accuracy_reader": {
            "baseline": _share([r.fact_answered for r in base_asks]),
            "ctxproto": _share([r.fact_answered for r in asks]),
        },
        "asks": [
            {
                "session": r.session,
                "turn": r.turn,
                "question": r.question,
                "fact_in_prompt": r.fact_in_prompt,
                "semantic_hit": r.semantic_hit,
                "answer": r.answer,
            }
            for r in asks
        ],
        "by_turns": _by_turns(baseline, ours),
    }


def _by_turns(baseline: Sequence[TurnRecord], ours: Sequence[TurnRecord]) -> list[dict[str, Any]]:
    """Cumulative figures after each turn index: how the speedup grows with length."""
    rows = []
    last = max(r.turn for r in baseline)
    for turn in range(1, last + 1):
        base = [r for r in baseline if r.turn <= turn]
        mine = [r for r in ours if r.turn <= turn]
        base_s = sum(r.seconds for r in base)
        mine_s = sum(r.seconds for r in mine)
        at_turn = [r for r in baseline if r.turn == turn]
        ours_at = [r for r in ours if r.turn == turn]
        rows.append(
            {
                "turn": turn,
                "baseline_prompt_tokens": sum(r.prompt_tokens for r in at_turn),
                "ctxproto_prompt_tokens": sum(r.prompt_tokens for r in ours_at),
                "ctxproto_prefill_tokens": sum(r.prefill_tokens for r in ours_at),
                "effective_tps_ratio": round(base_s / mine_s, 3) if mine_s else None,
            }
        )
    return rows


def plot_by_turns(rows: list[dict[str, Any]], path: Path) -> None:
    """Effective-TPS ratio and tokens per turn against conversation length."""
    from ctxproto._extras import require

    matplotlib = require("matplotlib", extra="eval")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = [r["turn"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(turns, [r["effective_tps_ratio"] for r in rows], marker="o")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set(xlabel="turns so far", ylabel="effective TPS ratio (ctxproto / baseline)")
    left.set_title("End-to-end speedup grows with conversation length")
    for key, label in (
        ("baseline_prompt_tokens", "baseline prompt"),
        ("ctxproto_prompt_tokens", "ctxproto prompt"),
        ("ctxproto_prefill_tokens", "ctxproto prefilled (after prefix cache)"),
    ):
        right.plot(turns, [r[key] for r in rows], label=label)
    right.set(xlabel="turn", ylabel="tokens (all sessions)")
    right.set_title("Tokens per turn")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _warm_up() -> None:
    """Load the models before any clock starts, so neither path pays for loading."""
    from ctxproto.models.embedder import get_embedder
    from ctxproto.models.loader import load_causal_lm, load_tokenizer

    load_causal_lm()
    load_tokenizer()
    get_embedder().embed(["warm up"])
    get_counter("hf:default")


def _p(records: Sequence[TurnRecord], q: float) -> float | None:
    value = percentile([r.ttft_ms for r in records], q)
    return None if value is None else round(value, 1)


def _share(values: Sequence[bool | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None
