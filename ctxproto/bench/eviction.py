"""``ctxproto bench eviction [--json]``: which span makes room, on request streams of known shape.

The prefix-KV cache's eviction order (``RadixKVCache(eviction=...)``) decides
how many prompt tokens a full cache makes the engine compute again. This replays
synthetic streams of chat requests through the cache alone (no model: each
request looks its prompt up, stores prompt and answer, as the engine does) under
each order and several caps, and counts the prompt tokens computed:

- ``round_robin``: 16 conversations taking turns, as a server's sessions do;
- ``churn``: 10 conversations taking turns, each replaced by a new one after 6 turns;
- ``random_users``: each request from a conversation picked at random among the
  live ones; a new one starts 15% of the time, and 8% of turns end theirs;
- ``one_offs``: half the requests are prompts never sent again, the other half
  from 6 conversations picked at random.

Every conversation starts after a shared 200-token system prompt; a turn adds a
30-token question and a 30-token answer. Three seeds each. Requests run one at a
time, and four at a time as a batch does: each looks up and stores its prompt
in turn (the prefills), then each stores prompt and answer (the finishes). The
concurrent workload of ``bench suite`` measures the same on the real engine, timed.
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from ctxproto._extras import require
from ctxproto.bench.machine import print_figures
from ctxproto.runtime.radix_cache import EVICTIONS, Eviction, RadixKVCache

__all__ = ["SCENARIOS", "register", "run_eviction_benchmark"]

SYSTEM_TOKENS, QUESTION_TOKENS, ANSWER_TOKENS = 200, 30, 30
CAPS = (1500, 3000, 6000)
"""Cache caps in tokens: below, around and above what the live conversations hold."""
SEEDS = (0, 1, 2)
IN_FLIGHT = (1, 4)
"""Requests served together."""

Request = tuple[list[int], list[int]]
"""A prompt and the answer stored after it."""


class _Conversations:
    """Token histories of conversations that all start after one system prompt."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.system = self.tokens(SYSTEM_TOKENS)
        self.histories: dict[int, list[int]] = {}

    def tokens(self, count: int) -> list[int]:
        return [self.rng.randrange(1, 50_000) for _ in range(count)]

    def turn(self, conversation: int) -> Request:
        history = self.histories.setdefault(conversation, list(self.system))
        question, answer = self.tokens(QUESTION_TOKENS), self.tokens(ANSWER_TOKENS)
        self.histories[conversation] = history + question + answer
        return history + question, answer


def _round_robin(chat: _Conversations) -> Iterator[Request]:
    for _ in range(12):
        for conversation in range(16):
            yield chat.turn(conversation)


def _churn(chat: _Conversations) -> Iterator[Request]:
    live, turns_left, started = list(range(10)), dict.fromkeys(range(10), 6), 10
    for _ in range(600):
        conversation = live.pop(0)
        yield chat.turn(conversation)
        turns_left[conversation] -= 1
        if turns_left[conversation]:
            live.append(conversation)
        else:
            live.append(started)
            turns_left[started] = 6
            started += 1


def _random_users(chat: _Conversations) -> Iterator[Request]:
    live: list[int] = []
    started = 0
    for _ in range(600):
        if not live or chat.rng.random() < 0.15:
            live.append(started)
            started += 1
        conversation = chat.rng.choice(live)
        yield chat.turn(conversation)
        if chat.rng.random() < 0.08:
            live.remove(conversation)


def _one_offs(chat: _Conversations) -> Iterator[Request]:
    for i in range(600):
        once = chat.rng.random() < 0.5
        yield chat.turn(1000 + i if once else chat.rng.randrange(6))


SCENARIOS: dict[str, Callable[[_Conversations], Iterator[Request]]] = {
    "round_robin": _round_robin,
    "churn": _churn,
    "random_users": _random_users,
    "one_offs": _one_offs,
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eviction", help="prefix-KV cache eviction orders on synthetic chat request streams"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    return print_figures(run_eviction_benchmark(), as_json=args.json, table=_print_table)


def run_eviction_benchmark() -> dict[str, Any]:
    """Prompt tokens computed per scenario, requests in flight, cap and eviction order,
    summed over the seeds."""
    rows = []
    for name, scenario in SCENARIOS.items():
        for in_flight, cap in itertools.product(IN_FLIGHT, CAPS):
            computed = {
                eviction: sum(
                    _computed(
                        scenario(_Conversations(random.Random(seed))), cap, eviction, in_flight
                    )
                    for seed in SEEDS
                )
                for eviction in EVICTIONS
            }
            rows.append(
                {
                    "scenario": name,
                    "in_flight": in_flight,
                    "cap_tokens": cap,
                    "computed_tokens": computed,
                    "lru_over_reuse": computed["lru"] / computed["reuse"],
                }
            )
    return {"seeds": len(SEEDS), "rows": rows}


def _computed(
    requests: Iterable[Request], cap_tokens: int, eviction: Eviction, in_flight: int
) -> int:
    """Replay ``requests`` as the engine makes them; the prompt tokens not found cached."""
    torch = require("torch", extra="runtime")
    token = torch.zeros(1, 1, 1, 1, 1)  # one float32 per token: the cap counts tokens
    cache = RadixKVCache(cap_tokens * token.element_size(), eviction=eviction)
    computed = 0
    for batch in _batches(requests, in_flight):
        held = []
        for prompt, _ in batch:  # the prefills
            match = cache.match_prefix(prompt[:-1])  # the last prompt token is always computed
            cache.lock(match.node)
            computed += len(prompt) - match.length
            node = cache.insert(prompt, _token_values(token, len(prompt)))
            cache.lock(node)
            cache.unlock(match.node)
            held.append(node)
        for (prompt, answer), node in zip(batch, held, strict=True):  # the finishes
            stored = prompt + answer
            finished = cache.insert(stored, _token_values(token, len(stored)))
            cache.lock(finished)
            cache.unlock(node)
            cache.unlock(finished)
    return computed


def _batches(requests: Iterable[Request], size: int) -> Iterator[list[Request]]:
    iterator = iter(requests)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _token_values(token: Any, count: int) -> Callable[[int, int], Any]:
    values = token.expand(1, 1, 1, count, 1)
    return lambda start, end: values.narrow(3, start, end - start)


def _print_table(result: dict[str, Any]) -> None:
    table = Table(title=f"prompt tokens computed (caps in tokens; {result['seeds']} seeds)")
    for column in ("scenario", "in flight", "cap", *EVICTIONS, "lru / reuse"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for row in result["rows"]:
        table.add_row(
            row["scenario"],
            str(row["in_flight"]),
            f"{row['cap_tokens']:,}",
            *(f"{row['computed_tokens'][e]:,}" for e in EVICTIONS),
            f"{row['lru_over_reuse']:.2f}x",
        )
    Console().print(table)
