"""The example scripts in ``examples/`` run as their docstrings say, without a model."""

from __future__ import annotations

import builtins
import importlib.util
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from rich.console import Console

from ctxproto import Pipeline, RecencyWindow
from ctxproto.runtime import ScriptedBackend
from ctxproto.session import ChatSession
from ctxproto.stores.session_state import SessionStateStore

EXAMPLES = Path(__file__).parents[1] / "examples"


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chatbot_pipeline_runs_from_any_folder(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "chatbot_pipeline.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.count(" tokens") == 3  # one line per question


def _typed(monkeypatch: pytest.MonkeyPatch, lines: list[str]) -> None:
    """The user types ``lines``, then closes the input (Ctrl-D)."""
    typed: Iterator[str] = iter(lines)

    def read(prompt: object = "") -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", read)


def _session(store: Path, replies: list[str]) -> ChatSession:
    return ChatSession(
        Pipeline([RecencyWindow(max_turns=8)]),
        ScriptedBackend(replies),
        session_id="terminal",
        history_store=SessionStateStore(store),
    )


def test_the_terminal_chatbot_says_it_continues_an_earlier_conversation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its history is stored, so a restarted bot answered with a prompt full of turns
    the user no longer saw, without a word; now it says so, and /reset starts anew."""
    chatbot = _example("chatbot")
    out = io.StringIO()
    console = Console(file=out, width=80)
    _typed(monkeypatch, ["Is the hub amber?", "/quit"])
    assert chatbot.chat(_session(tmp_path, ["It means no internet."]), console) == 0
    first = out.getvalue()
    assert "It means no internet." in first and "sent " in first
    assert "continuing" not in first

    out.truncate(0)
    _typed(monkeypatch, ["/reset", "Hello?"])
    again = _session(tmp_path, ["Hello!"])
    assert chatbot.chat(again, console) == 0
    assert "continuing an earlier run's conversation (1 question)" in out.getvalue()
    assert [m.content for m in again.history] == ["Hello?", "Hello!"]
