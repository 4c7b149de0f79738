"""Per-path figures of the chat benchmarks, from the records of the turns each path served.

Beyond seconds and tokens, two figures say what else a path's time depends on:

- ``decode_ms_per_token``: the mean over the turns the model answered with more than
  one token of each turn's time after its first token per later token. On a ctxproto
  path that time also holds the pipeline's work after the answer (the cache's put, the
  history saved). Our engine decodes speculatively (``runtime/speculation.py``), so the
  rate depends on what the answers say, not only on the prompt: an answer that repeats
  text already in the prompt is confirmed in fewer forwards.
- ``repeated_answers``: over the turns the model answered that do not repeat an earlier
  question (``cache_answerable``), the share whose first sentence an earlier answer of
  the same session began with. SmolLM2-135M falls into loops such as "I'm here to assist
  you with any questions or issues you're facing." on chat turns; a path whose answers
  loop decodes them faster, and its ratio says so.

``cache_alone`` is a reference for ctxproto's ratio against a peer on the same engine:
the ratio a path would reach if it answered every repeated question from a cache and
served every other turn exactly as the peer did.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ctxproto.bench.chat_paths import TurnRecord
from ctxproto.bench.chat_workload import KNOWLEDGE_KINDS, QUESTION_KINDS
from ctxproto.eval.metrics import percentile

__all__ = [
    "cache_alone",
    "cache_answerable",
    "path_figures",
    "repeated_answers",
    "share",
    "ttft_percentile",
]

_FIRST_SENTENCE = re.compile(r"\s*(.+?[.!?])(?:\s|$)", re.DOTALL)


def path_figures(rows: Sequence[TurnRecord], logical: int) -> dict[str, Any]:
    """One path's figures; ``logical`` is the tokens every path is credited with."""
    seconds = sum(r.seconds for r in rows)
    asks = [r for r in rows if r.fact_in_prompt is not None]
    answered = [r for r in rows if not r.semantic_hit and r.output_tokens > 1]
    decode = [(r.seconds - r.ttft_ms / 1000.0) * 1000.0 / (r.output_tokens - 1) for r in answered]
    return {
        "seconds": round(seconds, 3),
        "effective_tps": round(logical / seconds, 2) if seconds else None,
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "prefill_tokens": sum(r.prefill_tokens for r in rows),
        "output_tokens": sum(r.output_tokens for r in rows),
        "ttft_p50_ms": ttft_percentile(rows, 50),
        "ttft_p95_ms": ttft_percentile(rows, 95),
        "decode_ms_per_token": round(sum(decode) / len(decode), 2) if decode else None,
        "repeated_answers": share(repeated_answers(rows)),
        "fact_retention": share([r.fact_in_prompt for r in asks]),
        "fact_accuracy_reader": share([r.fact_answered for r in asks]),
    }


def repeated_answers(rows: Sequence[TurnRecord]) -> list[bool | None]:
    """Per turn, in serving order: whether the model's answer begins with a sentence an
    earlier answer the model wrote in its session began with. None for a cache hit, an
    empty answer, and a turn that repeats an earlier question, whose answer may rightly
    repeat too. A cache hit's answer is not the model's, so it is not counted against
    later answers either, though the model sees it in its history."""
    seen: set[tuple[str, str]] = set()
    out: list[bool | None] = []
    for row, repeat in zip(rows, cache_answerable(rows), strict=True):
        match = _FIRST_SENTENCE.match(row.answer)
        first = " ".join((match.group(1) if match else row.answer).split())
        key = (row.session, first)
        out.append(None if row.semantic_hit or repeat or not first else key in seen)
        if first and not row.semantic_hit:
            seen.add(key)
    return out


def cache_alone(peer: Sequence[TurnRecord]) -> float | None:
    """``peer``'s seconds over those of its turns no cache could answer
    (``cache_answerable``): ctxproto's ratio against a peer on the same engine if its
    only saving were the cache's, with every repeated question answered.

    A reference, not a bound: a path may also spend less than the peer on the turns
    it serves (a shorter prompt to compute and attend to, answers that decode faster),
    or more (documents placed with the question, a summary folded in)."""
    answerable = cache_answerable(peer)
    rest = sum(r.seconds for r, hit in zip(peer, answerable, strict=True) if not hit)
    return round(sum(r.seconds for r in peer) / rest, 3) if rest > 0 else None


def cache_answerable(turns: Sequence[TurnRecord]) -> list[bool]:
    """Per turn, in serving order: whether it repeats an earlier question.

    A knowledge question asked again, verbatim or reworded (``kb_repeat``), does; so does
    a question (``QUESTION_KINDS``) its session asked before, and a knowledge question
    another session asked before. A personal question ("what is my order number?")
    repeats only within its own session, and a chat turn never does: "Tell me more."
    asks about whatever came before it.
    """
    asked: set[tuple[str, str]] = set()
    out = []
    for turn in turns:
        mine = (turn.session, turn.question)
        shared = ("", turn.question)
        asking = turn.kind in QUESTION_KINDS and bool(turn.question)
        knowledge = turn.kind in KNOWLEDGE_KINDS
        out.append(
            turn.kind == "kb_repeat"
            or (asking and (mine in asked or (knowledge and shared in asked)))
        )
        if asking:
            asked.add(mine)
        if knowledge:
            asked.add(shared)
    return out


def ttft_percentile(records: Sequence[TurnRecord], q: float) -> float | None:
    value = percentile([r.ttft_ms for r in records], q)
    return None if value is None else round(value, 1)


def share(values: Sequence[bool | None]) -> float | None:
    """The share of True among the known values (None when none is known)."""
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None
