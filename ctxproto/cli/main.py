"""The ``ctxproto`` command: one module per sub-command, each with ``register(subparsers)``.

Errors the user can fix (bad config, bad request, bad dataset) exit with code 2
and one line on stderr, never a traceback; other ctxproto errors exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rich.console import Console

from ctxproto.errors import ConfigError, CtxprotoError, DatasetError

__all__ = ["build_parser", "main"]

# Sub-command modules under ctxproto.cli; each defines register(subparsers).
COMMANDS = ("run", "demo", "bench", "eval", "index", "serve")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    from ctxproto import __version__

    parser = argparse.ArgumentParser(
        prog="ctxproto",
        description="Context-management middleware for LLM applications: lean, "
        "prefix-stable prompts inside a token budget.",
    )
    parser.add_argument("--version", action="version", version=f"ctxproto {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ctxproto.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    err = Console(stderr=True, highlight=False)
    try:
        code: int = args.handler(args)
        return code
    except (ConfigError, DatasetError) as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        return EXIT_USAGE
    except CtxprotoError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
