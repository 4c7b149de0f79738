"""``--help`` of every command, as an 80-column terminal shows it."""

from __future__ import annotations

import argparse

import pytest

from ctxproto.cli.main import build_parser


def _commands(
    parser: argparse.ArgumentParser, name: str = "ctxproto"
) -> list[tuple[str, argparse.ArgumentParser]]:
    """``parser`` and every sub-command under it, by the words that run it."""
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, child in action.choices.items():
                found += _commands(child, f"{name} {word}")
    return found


COMMANDS = _commands(build_parser())


@pytest.mark.parametrize(("name", "parser"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_help_fits_80_columns_and_gives_every_default(
    name: str, parser: argparse.ArgumentParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = parser.format_help()
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, f"{name} --help: lines past 80 columns: {wide}"
    broken = [line for line in text.splitlines() if line.endswith("-")]
    assert not broken, f"{name} --help: words broken at a hyphen: {broken}"
    options = [action for action in parser._actions if action.option_strings]
    unexplained = [action.option_strings[-1] for action in options if not action.help]
    assert not unexplained, f"{name} --help does not say what {unexplained} are"
    silent = [
        action.option_strings[-1]
        for action in options
        if action.default not in (None, False, argparse.SUPPRESS)
        and "default" not in parser._get_formatter()._expand_help(action)
    ]
    assert not silent, f"{name} --help does not say the default of {silent}"
