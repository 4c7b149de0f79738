"""``ctxproto bench NAME [--json]``: benchmarks that print JSON.

Each benchmark is one module under ``ctxproto.bench`` exposing
``register(subparsers)``; list it in ``BENCHMARKS``. Figures go to
``docs/benchmarks.md`` with the command that reproduced them.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

__all__ = ["register"]

BENCHMARKS: tuple[str, ...] = (
    "stages",
    "prefix",
    "decode",
    "chat",
    "suite",
    "retrieval",
    "rag_retention",
    "cache",
    "eviction",
    "proxy",
    "stores",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print its figures")
    inner = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name in BENCHMARKS:
        importlib.import_module(f"ctxproto.bench.{name}").register(inner)
    parser.set_defaults(handler=_usage(parser))


def _usage(parser: argparse.ArgumentParser) -> Any:
    def handle(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return handle
