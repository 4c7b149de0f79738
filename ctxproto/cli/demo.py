"""``ctxproto demo``: a short chat benchmark, turn by turn, on the embedded models.

One support conversation (real user prompts, facts stated early and asked
later, knowledge-base questions asked twice) is served twice on the same model:
plainly (full history, no caches) and through ctxproto (retrieval, semantic
cache, checkpointed summary, prefix-KV engine). Each turn shows what was sent,
what was reused and how long the first token took; the closing summary gives
the effective tokens per second of both.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import Progress
from rich.table import Table

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="a short chat served plainly and through ctxproto, turn by turn"
    )
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ctxproto.bench.chat import run_chat_benchmark

    console = Console()
    console.rule("[bold]ctxproto demo[/]: one support chat, served two ways on SmolLM2-135M")
    table = _turn_table()
    with Progress(console=console, transient=True) as progress:
        live: Live | None = None

        def show(base: Any, ours: Any) -> None:
            nonlocal live
            if live is None:
                progress.stop()
                live = Live(table, console=console, refresh_per_second=4)
                live.start()
            table.add_row(
                str(ours.turn),
                ours.kind,
                ours.question[:44] + ("…" if len(ours.question) > 44 else ""),
                str(base.prompt_tokens),
                str(ours.prompt_tokens),
                str(ours.prompt_tokens - ours.prefill_tokens),
                "hit" if ours.semantic_hit else "",
                f"{base.ttft_ms:,.0f}",
                f"{ours.ttft_ms:,.0f}",
            )

        result = run_chat_benchmark(
            args.turns, 1, args.max_new_tokens, seed=0, progress=progress, on_turn=show
        )
        if live is not None:
            live.stop()
    _summary(console, result)
    return 0


def _turn_table() -> Table:
    table = Table(title="per turn (tokens; TTFT in ms)", expand=False)
    for name, justify in (
        ("turn", "right"),
        ("kind", "left"),
        ("user says", "left"),
        ("baseline sent", "right"),
        ("ctxproto sent", "right"),
        ("prefix reused", "right"),
        ("cache", "left"),
        ("TTFT base", "right"),
        ("TTFT ours", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table


def _summary(console: Console, result: dict[str, Any]) -> None:
    saved = result["prefill_tokens_baseline"] - result["prefill_tokens_ctxproto"]
    console.print()
    console.print(
        f"[bold]tokens computed[/]: baseline {result['prefill_tokens_baseline']:,}, "
        f"ctxproto {result['prefill_tokens_ctxproto']:,} "
        f"([bold green]{saved:,} saved[/]; prefix reuse {result['prefix_hit_rate']:.0%}, "
        f"semantic-cache hits {result['semantic_cache_hit_rate']:.0%})"
    )
    ttft = result["ttft_p50_ms"]
    console.print(
        f"[bold]median TTFT[/]: baseline {ttft['baseline']:,.0f} ms, "
        f"ctxproto {ttft['ctxproto']:,.0f} ms"
    )
    console.print(
        f"[bold]effective TPS[/]: baseline {result['effective_tps_baseline']:,.1f}, "
        f"ctxproto {result['effective_tps_ctxproto']:,.1f} tokens/s -> "
        f"[bold green]{result['effective_tps_ratio']:.1f}x[/] "
        f"(facts kept in the prompt when asked: {result['fact_retention']:.0%})"
    )
    console.print(
        "[dim]Figures from 2 shared CPU cores vary; `ctxproto bench chat --json` runs the "
        "full benchmark (docs/benchmarks.md).[/]"
    )
