"""Argument types and the parser class the sub-commands share.

A value out of range is refused by argparse itself, before anything loads: the
user sees ``argument --chunk-tokens: must be at least 1`` and the command exits
with code 2, like every other usage error. ``CommandParser`` is the parser of
``ctxproto`` and of every sub-command under it, so each ``--help`` gives every
option's default.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "CommandParser",
    "int_at_least",
    "int_between",
    "int_list",
    "non_blank",
    "non_blank_path",
    "non_negative_float",
    "positive_float",
]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: ...)`` to an option's help, unless the help already says its
    default or there is none to say (``None``, or ``False`` for a flag), and wraps
    lines between words only: never "full-" at a line's end and "history" below."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``--help`` gives defaults; sub-command parsers are of
    the parser's own class, so one set at the top reaches every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers ``>= minimum``."""
    return int_between(minimum, None)


def int_between(minimum: int, maximum: int | None) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers from ``minimum`` to ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def non_negative_float(text: str) -> float:
    """An argparse ``type`` accepting finite numbers ``>= 0``."""
    return _finite_float(text, zero=True)


def positive_float(text: str) -> float:
    """An argparse ``type`` accepting finite numbers ``> 0`` (a duration, a rate)."""
    return _finite_float(text, zero=False)


def _finite_float(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    low_enough = value >= 0 if zero else value > 0
    if not (low_enough and value < float("inf")):
        raise argparse.ArgumentTypeError(
            f"must be a finite number {'>=' if zero else '>'} 0, got {text}"
        )
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers, e.g. ``1000,2000,4000``; at least one."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'")
    return values


def non_blank(text: str) -> str:
    """An argparse ``type`` refusing an empty or blank value.

    As a path, ``""`` is the working directory: ``--store "$STORE"`` with the
    variable unset wrote a store's files among whatever the folder held.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def non_blank_path(text: str) -> Path:
    """``non_blank``, as a ``Path``."""
    return Path(non_blank(text))
