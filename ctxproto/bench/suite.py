"""``ctxproto bench suite``: every chat workload against every peer, in one run.

Each workload is a set of scripted conversations served by all the paths of
``ctxproto bench chat`` (``ctxproto.bench.chat.PATHS``), interleaved turn by
turn:

- **support**: the support chat of ``bench chat`` (30 turns x 2 sessions);
- **long**: one conversation of 160 turns whose full history outgrows the
  model's 8k window, so the full-history peers drop the oldest turns as chat
  apps do; facts are planted in the first turns and asked in the last ones.

``--quick`` shrinks every workload (and the long chat's window with it, so the
window is still exceeded) to finish in minutes on two cores: for checking the
machinery, not for figures.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from ctxproto.bench.chat import PATHS, print_comparison, run_paths
from ctxproto.bench.chat_workload import build_workload
from ctxproto.tokens import get_counter

__all__ = ["WORKLOADS", "Workload", "register", "run_suite"]

# SmolLM2's context window, less room for the answer: what a chat app fits into.
_MODEL_WINDOW_TOKENS = 8192


@dataclass(frozen=True)
class Workload:
    """Sizes of one workload, full and ``--quick``."""

    name: str
    sessions: int
    turns: int
    prompt_tokens: int
    window_tokens: int | None
    quick_turns: int
    quick_window_tokens: int | None


WORKLOADS: tuple[Workload, ...] = (
    Workload("support", 2, 30, 48, None, quick_turns=8, quick_window_tokens=None),
    Workload(
        "long", 1, 160, 64, _MODEL_WINDOW_TOKENS - 256, quick_turns=14, quick_window_tokens=700
    ),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "suite", help="every chat workload, ctxproto vs its full-history peers"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks, not figures")
    parser.add_argument(
        "--workloads", default=",".join(w.name for w in WORKLOADS), help="comma-separated"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from ctxproto.errors import ConfigError

    names = [n for n in args.workloads.split(",") if n]
    known = {w.name: w for w in WORKLOADS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown workload {', '.join(unknown)}; choose from {', '.join(known)}",
            key="workloads",
        )
    max_new_tokens = min(args.max_new_tokens, 8) if args.quick else args.max_new_tokens
    with Progress(transient=True, disable=args.json) as progress:
        results = run_suite(
            [known[n] for n in names],
            quick=args.quick,
            max_new_tokens=max_new_tokens,
            seed=args.seed,
            progress=progress,
        )
    if args.json:
        print(json.dumps(results))
        return 0
    for name, result in results["workloads"].items():
        print(f"\n== {name}: {json.dumps(result['workload'])}")
        print_comparison(result)
    return 0


def run_suite(
    workloads: list[Workload],
    *,
    quick: bool,
    max_new_tokens: int,
    seed: int,
    progress: Any = None,
) -> dict[str, Any]:
    """Each workload through every path; per workload the figures of ``bench chat``."""
    counter = get_counter()
    results: dict[str, Any] = {}
    for workload in workloads:
        turns = workload.quick_turns if quick else workload.turns
        sessions = 1 if quick else workload.sessions
        window = workload.quick_window_tokens if quick else workload.window_tokens
        scripts = build_workload(
            sessions, turns, counter, seed=seed, prompt_tokens=workload.prompt_tokens
        )
        result = run_paths(
            scripts, max_new_tokens, paths=PATHS, window_tokens=window, progress=progress
        )
        result.pop("turns")
        result.pop("by_turns")
        result["workload"] = {
            "sessions": sessions,
            "turns": turns,
            "max_new_tokens": max_new_tokens,
            "window_tokens": window,
        }
        results[workload.name] = result
    return {"quick": quick, "workloads": results}
