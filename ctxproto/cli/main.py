"""The ``ctxproto`` command: one module per sub-command, each with ``register(subparsers)``.

Usage errors (bad config, argument, request or dataset: ``UsageError``) exit
with code 2 and one line on stderr, never a traceback; operational failures
(``OperationalError``: a missing extra, a corrupt store, a backend down) exit 1.
Messages are printed as plain text, never as Rich markup: an install hint such as
``pip install 'ctxproto[embed]'`` must reach the user with its brackets.

Output is for pipes as much as for terminals: ``--json`` prints one strict JSON
document (``print_json``), and a reader that stops early (``ctxproto bench ...
--json | head -c1``) ends the command quietly, as it ends any Unix filter.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import select
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from ctxproto.cli.arguments import CommandParser
from ctxproto.errors import CtxprotoError, UsageError

__all__ = ["build_parser", "counted", "main", "print_json"]

# Sub-command modules under ctxproto.cli; each defines register(subparsers).
COMMANDS = ("run", "demo", "bench", "eval", "index", "serve", "mcp")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C ended
# What a shell reports for a writer whose reader left: killed by SIGPIPE (13), as
# `seq 1 1000000 | head -1` is. Python ignores that signal, so it is said by hand.
EXIT_BROKEN_PIPE = 128 + 13


def build_parser() -> argparse.ArgumentParser:
    from ctxproto import __version__

    parser = CommandParser(
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
    try:
        code = _run(argv)
        # Here, where a closed pipe can still be caught. A command started with its
        # stdout closed (`>&-`, a daemon's closed descriptors) has none to flush.
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a socket or a child's pipe: a failure, not a reader gone
        # The reader stopped early: say nothing, and point stdout at /dev/null so
        # that the interpreter's last flush at exit does not complain either.
        with contextlib.suppress(OSError, ValueError):  # a stdout without a descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except SystemExit as exc:
        # Rich's Console ends the process itself when its reader has gone: it points
        # stdout at /dev/null and raises SystemExit(1) while handling the
        # BrokenPipeError (Console.on_broken_pipe). Exit 1 says a failure; the same
        # quiet end as a plain print's is meant (`ctxproto run ... | head -1`).
        if not isinstance(exc.__context__, BrokenPipeError):
            raise
        return EXIT_BROKEN_PIPE
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse has printed --help, --version or the bad argument (exit code 2);
        # return the code so that ``main`` is a function callers and tests can use.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    err = Console(stderr=True, highlight=False)
    try:
        code: int = args.handler(args)
        return code
    except UsageError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE
    except CtxprotoError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no stdout fd
        return False  # unsure: the error is raised, never swallowed
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


def print_json(document: Any) -> None:
    """Print ``document`` as the one strict JSON document a ``--json`` command prints.

    Python's ``json`` writes a float NaN or infinity as ``NaN`` or ``Infinity``,
    which no strict JSON reader (``jq``, JavaScript, Go) accepts: a figure that
    could not be measured is printed as ``null`` instead, as a missing one is.
    """
    # ASCII escapes: a path or a name outside ASCII must not fail a terminal or a
    # pipe whose encoding is not UTF-8, after a whole benchmark has run.
    print(json.dumps(_finite(document), ensure_ascii=True, allow_nan=False))


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 document", "2 documents"."""
    return f"{n} {noun}{'s' * (n != 1)}"


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float, however deeply nested, made ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
