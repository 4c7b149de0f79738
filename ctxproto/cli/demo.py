"""``ctxproto demo``: the example pipeline on the example request."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from ctxproto.cli.run import print_result
from ctxproto.context import ChatRequest
from ctxproto.errors import ConfigError
from ctxproto.pipeline import Pipeline

__all__ = ["register"]


def examples_dir() -> Path:
    """The repository's ``examples/`` folder (the demo runs from a checkout)."""
    here = Path(__file__).resolve().parents[2] / "examples"
    if not here.is_dir():
        raise ConfigError(f"examples folder not found at {here}; run the demo from a checkout")
    return here


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the example pipeline on the example chat")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    examples = examples_dir()
    pipeline = Pipeline.from_yaml(examples / "pipelines" / "minimal.yaml")
    request = ChatRequest.from_json_file(str(examples / "requests" / "support_chat.json"))
    console = Console()
    console.rule("[bold]ctxproto demo[/]: examples/pipelines/minimal.yaml on support_chat.json")
    result = pipeline.run(request)
    print_result(console, pipeline, result)
    saved = result.original_tokens - result.prompt_tokens
    console.print(f"[bold green]saved {saved} tokens[/] of {result.original_tokens} on this turn")
    return 0
