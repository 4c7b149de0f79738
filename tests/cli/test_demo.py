"""``ctxproto demo``'s rendering, from turn records, at 80 and 120 columns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console

from ctxproto.bench.chat_paths import TurnRecord
from ctxproto.cli.demo import header_lines, summary, turn_lines

LONG_QUESTION = (
    "Hi! By the way, my order number is ORD-99182 and I would like to know whether the "
    "express shipping to Gujarat, which I paid extra for, includes the customs fees too?"
)
LONG_ANSWER = (
    "Express shipping takes two to three business days within the country, and customs "
    "fees are included for every destination we ship to; your order ORD-99182 left the "
    "warehouse yesterday and should arrive on Thursday."
)


BASE = TurnRecord(
    session="s0",
    turn=1,
    kind="kb",
    prompt_tokens=14_617,
    prefill_tokens=14_617,
    output_tokens=24,
    ttft_ms=32_512.0,
    seconds=40.0,
    question=LONG_QUESTION,
    answer=LONG_ANSWER,
)


def record(turn: int, **fields: Any) -> TurnRecord:
    return replace(BASE, turn=turn, **fields)


TURNS = [
    (record(1, kind="fact"), record(1, kind="fact", prefill_tokens=1_168, ttft_ms=593.0)),
    (
        record(2, question="What did I say my name is?", answer="Lucia Haddad."),
        record(2, question="What did I say my name is?", answer="Lucia Haddad.", ttft_ms=9.0),
    ),
    (
        record(3, question="Short?", answer="Multi-line\n\nanswer\twith   odd spacing"),
        record(
            3,
            question="Short?",
            answer="Multi-line\n\nanswer\twith   odd spacing",
            prefill_tokens=0,
            prompt_tokens=0,
            semantic_hit=True,
        ),
    ),
    (record(4, answer=""), record(4, answer="")),
    (record(5, kind="kb_repeat"), record(5, kind="kb_repeat", ttft_ms=12.0)),
    (record(6, kind="a_kind_nobody_planned"), record(6, kind="a_kind_nobody_planned")),
]

RESULT = {
    "prefill_tokens_baseline": 14_338,
    "prefill_tokens_ctxproto": 2_392,
    "prefix_hit_rate": 0.81,
    "semantic_cache_hit_rate": 0.1,
    "ttft_p50_ms": {"baseline": 29_595.0, "ctxproto": 1_734.0},
    "effective_tps_baseline": 40.3,
    "effective_tps_ctxproto": 163.3,
    "effective_tps_ratio": 4.1,
    "fact_retention": 1.0,
    "paths": {
        "generate": {"effective_tps": 40.3},
        "engine": {"effective_tps": 120.5},
        "ctxproto": {"effective_tps": 163.3},
    },
    "headline": {"best_full_history_peer": "engine", "ratio": 1.355},
    "unavailable": {"llama_cpp": "llama-server not found; make bench-peers builds it"},
}


def render(width: int) -> tuple[list[list[str]], list[str]]:
    """Each turn's lines, and every line of the whole output, as a terminal shows them."""
    console = Console(width=width, record=True, color_system=None)
    per_turn = []
    for line in header_lines(width):
        console.print(line, no_wrap=True)
    for base, ours in TURNS:
        lines = turn_lines(base, ours, width)
        per_turn.append([line.plain for line in lines])
        for line in lines:
            console.print(line, no_wrap=True)
    console.print(summary(RESULT))
    return per_turn, console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 120])
def test_every_line_fits_the_terminal(width):
    per_turn, output = render(width)
    assert max(cell_len(line) for line in output) <= width
    for lines in per_turn:
        assert 2 <= len(lines) <= 3  # one line of figures, the answer in one or two
        assert all(cell_len(line) <= width for line in lines)


@pytest.mark.parametrize("width", [80, 120])
def test_turn_line_holds_the_question_and_the_figures(width):
    per_turn, _ = render(width)
    first = per_turn[0][0]
    assert first.startswith(" 1 fact   Hi! By the way, my order number")
    assert "…" in first  # the long question is cut, not wrapped
    assert "14,617 →  1,168" in first
    assert "32.5 s →  593 ms" in first
    assert per_turn[1][0].count("What did I say my name is?") == 1
    # Every kind, however long, leaves the figures whole and in their columns.
    columns = {line[0].index("→") for line in per_turn}
    assert len(columns) == 1
    assert per_turn[4][0].startswith(" 5 repeat Hi!")
    assert per_turn[4][0].endswith("32.5 s →   12 ms")
    assert per_turn[5][0].startswith(" 6 a_kin… Hi!")


@pytest.mark.parametrize("width", [80, 120])
def test_answers_are_shown_under_their_turn(width):
    per_turn, _ = render(width)
    answer = " ".join(line.strip() for line in per_turn[0][1:])
    assert answer.startswith("bot: Express shipping takes two to three business days")
    assert answer.endswith("…")  # too long for two lines
    assert per_turn[1][1].strip() == "bot: Lucia Haddad."
    assert per_turn[2][1].strip() == "bot (semantic cache): Multi-line answer with odd spacing"
    assert per_turn[3][1].strip() == "bot: (empty)"


def test_wider_terminals_show_more_of_the_question_and_answer():
    narrow, _ = render(80)
    wide, _ = render(120)
    assert len(wide[0][0].split("…")[0]) > len(narrow[0][0].split("…")[0])
    assert len(" ".join(wide[0][1:])) > len(" ".join(narrow[0][1:]))


def test_summary_keeps_the_ratio_against_the_baseline():
    _, output = render(80)
    text = " ".join(" ".join(output).split())
    assert "baseline 14,338, ctxproto 2,392 (11,946 saved" in text
    assert "→ 4.1x" in text
    assert "baseline 29.6 s, ctxproto 1.7 s" in text


@pytest.mark.parametrize("width", [80, 120])
def test_summary_gives_the_ratio_against_the_best_peer_and_names_those_not_run(width):
    _, output = render(width)
    text = " ".join(" ".join(output).split())
    assert "vs the best peer engine + prefix cache 120.5, ctxproto 163.3 tokens/s → 1.4x" in text
    assert "llama.cpp + prompt cache not run: llama-server not found" in text


def test_sigterm_ends_the_demo_as_ctrl_c_does(tmp_path):
    """``kill`` read as Ctrl-C: the run's cleanup stops the llama.cpp server it started
    (Python's default SIGTERM action ended it with none, the server left running).
    Sent as soon as the title is out, before any model loads, so the test is quick."""
    command = [sys.executable, "-m", "ctxproto", "demo", "--turns", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "COLUMNS": "80"}
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert run.stdout is not None
        assert b"ctxproto demo" in run.stdout.readline()
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, err
    assert err.decode().splitlines() == ["interrupted"]
