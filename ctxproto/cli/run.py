"""``ctxproto run PIPELINE.yaml --request REQUEST.json [--json]``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ctxproto.cli.main import counted, print_json
from ctxproto.context import ChatRequest
from ctxproto.pipeline import Pipeline, PipelineResult

__all__ = ["print_result", "register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a pipeline on a chat request and show the assembled prompt",
        description="Run PIPELINE (a YAML config) on REQUEST (an OpenAI-style chat JSON).",
    )
    parser.add_argument("pipeline", help="pipeline config file (YAML)")
    parser.add_argument("--request", required=True, help="chat request JSON file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_yaml(args.pipeline)
    request = ChatRequest.from_json_file(args.request)
    result = pipeline.run(request)
    if args.json:
        print_json(result.summary())
    else:
        print_result(Console(), pipeline, result)
    return 0


def print_result(console: Console, pipeline: Pipeline, result: PipelineResult) -> None:
    """The assembled prompt, a per-stage table and the token totals, for people."""
    if result.prompt is not None:
        for message in result.prompt.messages:
            text = message.get("content") or json.dumps(message.get("tool_calls"))
            console.rule(f"[bold]{escape(message['role'])}[/]", align="left")
            console.print(text, markup=False, highlight=False)
    else:
        console.print(f"[bold green]answered without the model:[/] {escape(result.answer or '')}")
    table = Table(title=f"pipeline '{escape(pipeline.name)}'")
    table.add_column("stage")
    table.add_column("tokens in", justify="right")
    table.add_column("tokens out", justify="right")
    table.add_column("ms", justify="right")
    # Folded, never cut: "fallback_sentences_dropped=0" lost its end at 80 columns.
    table.add_column("counters", overflow="fold")
    for report in result.reports:
        counters = ", ".join(f"{k}={v:g}" for k, v in report.counters.items())
        table.add_row(
            escape(report.name),
            str(report.tokens_in),
            str(report.tokens_out),
            f"{report.ms:.1f}",
            counters,
        )
    console.print(table)
    for repair in result.context.repairs:
        console.print(f"[yellow]request repaired:[/] {repair}", highlight=False)
    summary = result.summary()
    ratio = summary["compression_ratio"]
    budget = summary["budget"] if summary["budget"] is not None else "none"
    shrunk = f"{ratio:.2f}x smaller" if ratio and round(ratio, 2) != 1 else "unchanged"
    # Two short lines rather than one that wraps mid-figure in an 80-column terminal.
    console.print(
        f"original [bold]{result.original_tokens}[/] tokens -> prompt "
        f"[bold]{result.prompt_tokens}[/] tokens ({shrunk})"
    )
    # What the budget dropped after the stages ran: without it the stage table's last
    # count and the printed prompt disagree, with nothing to say why.
    dropped = "".join(f", dropped {_count(n, kind)}" for kind, n in summary["dropped"].items())
    console.print(f"budget {budget}{dropped}, {result.ms:.1f} ms", style="dim")


_DROPPED_UNITS = {"history": "history message", "documents": "document", "memory": "memory section"}
"""What one dropped section of each kind is, as ``print_result`` names it."""


def _count(n: int, kind: str) -> str:
    return counted(n, _DROPPED_UNITS.get(kind, f"{kind} section"))
