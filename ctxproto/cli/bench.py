"""``ctxproto bench NAME [--json]``: benchmarks that print JSON.

Each benchmark is one module under ``ctxproto.bench`` exposing
``register(subparsers)``; list it in ``BENCHMARKS``. Figures go to
``docs/benchmarks.md`` with the command that reproduced them.

Every benchmark runs with SIGTERM read as Ctrl-C (``stoppable``): Python's
default SIGTERM action ends the process with no ``finally`` run, so the servers
a benchmark started (llama.cpp's, PostgreSQL, valkey-server) ran on, orphaned,
with their temporary folders, after ``kill`` or ``timeout`` ended it. Read as
Ctrl-C, they are stopped by their PIDs and the folders removed.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from ctxproto.cli.interrupt import stoppable

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
    for benchmark in inner.choices.values():
        benchmark.set_defaults(handler=stoppable(benchmark.get_default("handler")))
    parser.set_defaults(handler=_usage(parser))


def _usage(parser: argparse.ArgumentParser) -> Any:
    def handle(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return handle
