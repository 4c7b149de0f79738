"""``ctxproto bench chat``: effective tokens per second of a chatbot, ctxproto and its peers.

**Effective TPS** is the number of tokens the plain full-history chatbot must
process for the workload — its prompt tokens plus its generated tokens, summed
over every turn — divided by wall-clock seconds. Every path serves the same
conversations, so each is credited with the same logical tokens, and the ratio
of two paths' effective TPS is the end-to-end speedup of one over the other.

The paths (``PATHS``), served turn by turn in turns so that whatever else the
machine does slows all alike:

- ``generate``: full history, ``transformers`` ``generate``, no KV reuse;
- ``engine``: full history on the bundled engine with its prefix-KV cache;
- ``llama_cpp``: full history on llama.cpp's server, prompt cache on;
- ``ctxproto``: the ``examples/pipelines/chatbot.yaml`` session -> bundled engine;
- ``ctxproto_llama_cpp``: the same session -> llama.cpp's server (OpenAI backend).

The headline is ctxproto's ratio against the **best** full-history peer, the
one users would otherwise run; every ratio is reported. A peer that cannot run
(no llama.cpp binary, a CPU it was not built for) is named with the reason.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxproto.bench.chat_figures import cache_alone, path_figures, share, ttft_percentile
from ctxproto.bench.chat_paths import (
    KnowledgeSetup,
    TurnRecord,
    ctxproto_turns,
    full_history_turns,
    generate_turns,
)
from ctxproto.bench.chat_workload import SessionScript, build_workload, examples_dir
from ctxproto.bench.machine import machine_line, print_figures
from ctxproto.cli.arguments import int_at_least
from ctxproto.errors import BackendError, ConfigError
from ctxproto.stores.atomic import atomic_write_bytes
from ctxproto.tokens import TokenCounter, get_counter

if TYPE_CHECKING:
    from ctxproto.bench.llama_server import LlamaServer
    from ctxproto.runtime.engine import QuantizeMode

__all__ = [
    "FULL_HISTORY_PATHS",
    "PATHS",
    "Serving",
    "compare_paths",
    "engine_options",
    "engine_serving",
    "parse_paths",
    "print_comparison",
    "register",
    "run_chat_benchmark",
    "run_paths",
    "summarize",
]

FULL_HISTORY_PATHS = ("generate", "engine", "llama_cpp")
CTXPROTO_PATHS = ("ctxproto", "ctxproto_llama_cpp")
PATHS = FULL_HISTORY_PATHS + CTXPROTO_PATHS
SAME_ENGINE = {"ctxproto": "engine", "ctxproto_llama_cpp": "llama_cpp"}
"""Each ctxproto path and the full-history path on the same engine."""


@dataclass(frozen=True)
class Serving:
    """How the paths serve a workload, beyond the conversations themselves.

    ``kv_budget_tokens`` caps the KV memory each path may keep, in tokens of
    the model: the engine's prefix cache gets that many tokens' bytes, and
    llama.cpp that total context shared by ``llama_parallel`` slots, with its
    host-memory prompt cache off, so neither keeps more than the other; with
    ``llama_kv_unified`` the slots share one KV buffer of that size, as the
    engine's sessions share its cache, rather than each owning an equal part.
    ``knowledge`` replaces the bundled knowledge base in ctxproto's pipeline.
    ``quantize`` is the engine mode of both paths on our engine (``engine`` and
    ``ctxproto``), so the full-history peer on our engine runs what ctxproto runs;
    ``speculate=False`` turns their speculative decoding off, whose gain depends on
    what the answers say (an answer that loops is confirmed in fewer forwards).
    ``fixed_length`` makes every answer the model writes, on every path,
    ``max_new_tokens`` long (its end-of-sequence token ignored), so that a path
    whose answers happen to end early is not counted faster for it.
    """

    round_robin: bool = False
    kv_budget_tokens: int | None = None
    llama_parallel: int = 1
    llama_kv_unified: bool = False
    knowledge: KnowledgeSetup | None = None
    quantize: QuantizeMode = "auto"
    speculate: bool = True
    fixed_length: bool = False


def add_engine_arguments(parser: Any) -> None:
    """``--quantize`` and ``--no-speculate``: how our engine runs on the paths on it
    (``Serving.quantize``, ``Serving.speculate``); ``--fixed-length``: how long every
    path's answers are (``Serving.fixed_length``)."""
    from ctxproto.runtime.engine import QUANTIZE_MODES

    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default="auto",
        metavar="MODE",
        help=f"{', '.join(QUANTIZE_MODES)}: weights of our engine on the engine and ctxproto "
        "paths (docs/runtime.md); the generate path stays float32",
    )
    parser.add_argument(
        "--no-speculate",
        action="store_true",
        help="our engine decodes one token per forward on the engine and ctxproto paths, so "
        "the decode rate no longer depends on what the answers say (docs/benchmarks.md)",
    )
    parser.add_argument(
        "--fixed-length",
        action="store_true",
        help="every answer on every path is --max-new-tokens long, the end-of-sequence token "
        "ignored, so that answers ending early do not count as speed (docs/benchmarks.md)",
    )


def engine_serving(args: argparse.Namespace) -> Serving:
    """The ``Serving`` of the options ``add_engine_arguments`` added to a command."""
    return Serving(
        quantize=args.quantize, speculate=not args.no_speculate, fixed_length=args.fixed_length
    )


def engine_options(serving: Serving) -> dict[str, Any]:
    """The ``Engine`` options of the paths on our engine under ``serving``."""
    from ctxproto.runtime.engine import DEFAULT_CACHE_BYTES

    budget = serving.kv_budget_tokens
    return {
        "cache_bytes": DEFAULT_CACHE_BYTES if budget is None else budget * kv_bytes_per_token(),
        "quantize": serving.quantize,
        "speculate": serving.speculate,
    }


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chat", help="effective TPS of a multi-session chat: ctxproto vs full-history peers"
    )
    parser.add_argument("--turns", type=int_at_least(1), default=30, help="user turns per session")
    parser.add_argument("--sessions", type=int_at_least(1), default=2, help="chat sessions")
    parser.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=32, help="tokens per answer at most"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated chats")
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated subset of {','.join(PATHS)} (default: all)",
    )
    add_engine_arguments(parser)
    parser.add_argument("--plot", type=Path, help="write the by-turns plot (PNG) here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    paths = parse_paths(args.paths)
    if args.plot is not None:
        check_plot_path(args.plot)
    with Progress(transient=True, disable=args.json) as progress:
        result = run_chat_benchmark(
            args.turns,
            args.sessions,
            args.max_new_tokens,
            args.seed,
            progress=progress,
            paths=paths,
            serving=engine_serving(args),
        )
    if args.plot:
        plot_by_turns(result["by_turns"], args.plot)
    summary = {k: v for k, v in result.items() if k != "turns"}
    return print_figures(summary, as_json=args.json, table=print_comparison)


def check_plot_path(path: Path) -> None:
    """``--plot``, checked before the benchmark runs: it is drawn after the whole run,
    so a missing extra or a path that cannot be written would otherwise end minutes
    of work in a traceback, with every figure lost."""
    import tempfile

    from ctxproto._extras import require

    require("matplotlib", extra="eval")
    try:
        folder = path.is_dir() or not path.name  # a name too long raises here
    except OSError as exc:
        raise ConfigError(
            f"cannot write the plot to {path}: {exc.strerror}", key="--plot"
        ) from None
    if folder:
        raise ConfigError(
            f"{path} is a folder", key="--plot", expected="the path of the PNG file to write"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary file the atomic write makes, whose name is 14 characters
        # longer than the plot's: a name the folder takes but not that one failed
        # only once the benchmark had run.
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the plot to {path}: {exc.strerror}",
            key="--plot",
            expected="a file in a folder this user can write",
        ) from None


def parse_paths(text: str) -> tuple[str, ...]:
    """``--paths``: known paths, ``ctxproto`` and at least one full-history peer among them."""
    paths = tuple(p for p in text.split(",") if p)
    unknown = sorted(set(paths) - set(PATHS))
    if unknown or "ctxproto" not in paths or not set(paths) & set(FULL_HISTORY_PATHS):
        raise ConfigError(
            f"--paths must name ctxproto, at least one of {', '.join(FULL_HISTORY_PATHS)} "
            f"and any of {', '.join(PATHS)}; unknown: {', '.join(unknown) or 'none'}",
            key="--paths",
        )
    return paths


def run_chat_benchmark(
    turns: int,
    sessions: int,
    max_new_tokens: int,
    seed: int,
    *,
    progress: Any = None,
    on_turn: Callable[[TurnRecord, TurnRecord], None] | None = None,
    paths: Sequence[str] = ("generate", "ctxproto"),
    serving: Serving = Serving(),
) -> dict[str, Any]:
    """The support-chat workload on ``paths``; ``on_turn(generate, ctxproto)`` per turn."""
    for key, value in (
        ("turns", turns),
        ("sessions", sessions),
        ("max_new_tokens", max_new_tokens),
    ):
        if value < 1:
            raise ConfigError(f"must be at least 1, got {value}", key=key)
    counter = get_counter()
    scripts = build_workload(sessions, turns, counter, seed=seed)
    result = run_paths(
        scripts, max_new_tokens, paths=paths, serving=serving, progress=progress, on_turn=on_turn
    )
    result["workload"] = {"sessions": sessions, "turns": turns, "max_new_tokens": max_new_tokens}
    return result


def run_paths(
    scripts: list[SessionScript],
    max_new_tokens: int,
    *,
    paths: Sequence[str] = PATHS,
    window_tokens: int | None = None,
    serving: Serving = Serving(),
    progress: Any = None,
    on_turn: Callable[[TurnRecord, TurnRecord], None] | None = None,
) -> dict[str, Any]:
    """Serve ``scripts`` on every path in ``paths``, interleaved turn by turn; the figures."""
    if "ctxproto" not in paths:
        raise ConfigError("the ctxproto path must be among them", key="paths")
    examples = examples_dir()
    system_prompt = (examples / "system_prompt.md").read_text(encoding="utf-8")
    counter = get_counter("hf:default")
    total = sum(len(s.turns) for s in scripts)
    task = progress.add_task(f"serving turns, {len(paths)} ways", total=total) if progress else None
    _warm_up()
    with ExitStack() as stack:
        engines: dict[str, Any] = {}
        servers: dict[str, LlamaServer] = {}
        unavailable: dict[str, str] = {}
        served: dict[str, Iterator[TurnRecord]] = {}
        for path in paths:
            try:
                backend = _backend(path, stack, engines, servers, serving)
            except BackendError as exc:
                unavailable[path] = str(exc)
                continue
            served[path] = _turns(
                path,
                scripts,
                system_prompt,
                max_new_tokens,
                backend,
                counter,
                window_tokens,
                examples,
                serving,
            )
        _check_peers(served, unavailable, "could be started")
        records: dict[str, list[TurnRecord]] = {path: [] for path in served}
        for _ in range(total):
            for path in list(served):
                try:
                    records[path].append(next(served[path]))
                except BackendError as exc:
                    if path not in servers:
                        raise  # our own engine failing is a failure of the run
                    # llama.cpp's server died or stopped answering: the other paths
                    # are still reported, this one is named with why it stopped.
                    unavailable[path] = _stopped(servers[path], len(records[path]), exc)
                    del served[path], records[path]
                    servers[path].stop()  # one that hangs must not take CPU from the rest
            _check_peers(served, unavailable, "is left")
            if on_turn is not None:
                on_turn(records[_baseline(records)][-1], records["ctxproto"][-1])
            if task is not None:
                progress.advance(task)
        cache_stats = {path: engine.stats().model_dump() for path, engine in engines.items()}
        kept = {path: server for path, server in servers.items() if path in records}
        binaries = {path: str(server.binary) for path, server in kept.items()}
        threads = {path: server.threads for path, server in kept.items()}
    from ctxproto.runtime.engine import resolve_quantize

    result = summarize(records[_baseline(records)], records["ctxproto"])
    result.update(compare_paths(records))
    result.update(
        # the path the classic fields above (baseline_seconds, effective_tps_ratio,
        # by_turns...) compare against: `generate` when it ran; the headline against
        # the best full-history peer is in `ratios`
        baseline_path=_baseline(records),
        unavailable=unavailable,
        prefix_cache=cache_stats.get("ctxproto", {}),
        prefix_cache_by_path=cache_stats,
        # Which llama-server build served each llama.cpp path: one built from source
        # for this CPU (`make bench-peers`) or the prebuilt one (AVX-512 and AVX-VNNI).
        llama_server_by_path=binaries,
        llama_server_threads_by_path=threads,
        window_tokens=window_tokens,
        quantize=resolve_quantize(serving.quantize),
        # What ran: the engine turns speculation off itself in the int8 and bf16 modes.
        speculate_by_path={path: engine.speculate for path, engine in engines.items()},
        fixed_length=serving.fixed_length,
        device="cpu",
        turns=[vars(r) for r in records["ctxproto"]],
    )
    return result


def _check_peers(served: dict[str, Any], unavailable: dict[str, str], what: str) -> None:
    """Fail when no full-history peer is left to compare with, saying why each is gone."""
    if not set(served) & set(FULL_HISTORY_PATHS):
        reasons = "; ".join(f"{path}: {why}" for path, why in unavailable.items())
        raise BackendError(f"no full-history peer {what} ({reasons})")


def _stopped(server: LlamaServer, turns: int, error: BackendError) -> str:
    """Why a path on ``server`` stopped after serving ``turns`` turns."""
    exited = server.exit_reason()
    because = f"llama-server {exited}; " if exited else ""
    return f"stopped after {turns} turn{'s' * (turns != 1)}: {because}{error}"


def _baseline(records: dict[str, list[TurnRecord]]) -> str:
    """The full-history path the classic figures compare against: `generate` when it ran."""
    for path in FULL_HISTORY_PATHS:
        if path in records:
            return path
    raise BackendError("no full-history path ran")  # run_paths checks this before serving


def _backend(
    path: str,
    stack: ExitStack,
    engines: dict[str, Any],
    servers: dict[str, LlamaServer],
    serving: Serving,
) -> Any:
    """The backend ``path`` runs on: its own engine or its own llama.cpp server (noted
    in ``engines`` or ``servers``)."""
    if path == "generate":
        return None
    budget = serving.kv_budget_tokens
    if path in ("engine", "ctxproto"):
        from ctxproto.runtime import Engine, LocalBackend

        engine = stack.enter_context(Engine(**engine_options(serving)))
        engines[path] = engine
        return stack.enter_context(LocalBackend(engine))
    from ctxproto.bench.llama_server import LlamaServer
    from ctxproto.models.resolver import resolve_lm
    from ctxproto.runtime import OpenAIBackend

    model = resolve_lm()
    assert model.gguf_file is not None  # the bundled default is a GGUF file
    server = LlamaServer(
        Path(model.location) / model.gguf_file,
        context_tokens=8192 if budget is None else budget,
        parallel=serving.llama_parallel,
        kv_unified=serving.llama_kv_unified,
        prompt_cache_ram=budget is None,
    )
    stack.enter_context(server)
    servers[path] = server
    return stack.enter_context(OpenAIBackend(server.base_url, timeout=600.0))


def _turns(
    path: str,
    scripts: list[SessionScript],
    system_prompt: str,
    max_new_tokens: int,
    backend: Any,
    counter: TokenCounter,
    window_tokens: int | None,
    examples: Path,
    serving: Serving,
) -> Iterator[TurnRecord]:
    round_robin = serving.round_robin
    if path == "generate":
        return generate_turns(
            scripts,
            system_prompt,
            max_new_tokens,
            counter,
            window_tokens=window_tokens,
            round_robin=round_robin,
            fixed_length=serving.fixed_length,
        )
    if path in FULL_HISTORY_PATHS:
        return full_history_turns(
            scripts,
            system_prompt,
            max_new_tokens,
            backend,
            counter,
            window_tokens=window_tokens,
            round_robin=round_robin,
            fixed_length=serving.fixed_length,
        )
    return ctxproto_turns(
        scripts,
        system_prompt,
        max_new_tokens,
        examples,
        backend,
        round_robin=serving.round_robin,
        knowledge=serving.knowledge,
        fixed_length=serving.fixed_length,
    )


def kv_bytes_per_token() -> int:
    """Bytes of keys and values one token holds in the bundled model, all layers."""
    from ctxproto.models.loader import load_causal_lm

    model = load_causal_lm()
    config = model.config
    heads = int(getattr(config, "num_key_value_heads", config.num_attention_heads))
    head_dim = int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    return 2 * int(config.num_hidden_layers) * heads * head_dim * int(model.dtype.itemsize)


def compare_paths(records: dict[str, list[TurnRecord]]) -> dict[str, Any]:
    """Per-path figures, every ctxproto/full-history ratio, and the headline.

    Every path is credited with the full-history baseline's logical tokens; a
    ratio is the peer's seconds over ctxproto's. The headline compares the
    ``ctxproto`` path with the fastest full-history peer. ``cache_alone`` gives, for
    each ctxproto path and the full-history peer on its engine, the ratio the cache
    alone would reach (``chat_figures.cache_alone``).
    """
    logical = sum(r.prompt_tokens + r.output_tokens for r in records[_baseline(records)])
    figures = {path: path_figures(rows, logical) for path, rows in records.items()}
    peers = [p for p in FULL_HISTORY_PATHS if p in records]
    ratios = {
        f"{ours}/{peer}": round(figures[peer]["seconds"] / figures[ours]["seconds"], 3)
        for ours in CTXPROTO_PATHS
        if ours in records
        for peer in peers
    }
    best = min(peers, key=lambda p: figures[p]["seconds"])
    return {
        "paths": figures,
        "ratios": ratios,
        "headline": {"best_full_history_peer": best, "ratio": ratios[f"ctxproto/{best}"]},
        "cache_alone": {
            f"{ours}/{peer}": cache_alone(records[peer])
            for ours, peer in SAME_ENGINE.items()
            if ours in records and peer in records
        },
    }


def print_comparison(result: dict[str, Any]) -> None:
    """The per-path table and the ratios in 80 columns, then the machine and the
    llama-server builds."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=80)
    table = Table(title="paths (same turns, same model, greedy)")
    for name in ("path", "seconds", "eff. TPS", "prefilled", "TTFT p50", "facts"):
        table.add_column(name, justify="left" if name == "path" else "right")
    for path, row in result["paths"].items():
        retention = row["fact_retention"]
        table.add_row(
            path,
            f"{row['seconds']:,.1f}",
            f"{row['effective_tps'] or 0:,.1f}",
            f"{row['prefill_tokens']:,}",
            f"{row['ttft_p50_ms'] or 0:,.0f} ms",
            "-" if retention is None else f"{retention:.0%}",
        )
    console.print(table)
    for pair, ratio in result["ratios"].items():
        console.print(f"  {pair:<32} {ratio:6.2f}x")
    headline = result["headline"]
    console.print(
        f"[bold]ctxproto vs the best full-history peer ({headline['best_full_history_peer']})"
        f": {headline['ratio']:.2f}x[/]"
    )
    alone = {pair: ratio for pair, ratio in result.get("cache_alone", {}).items() if ratio}
    if alone:
        console.print("with every repeated question from the cache, the rest as the peer:")
    for pair, ratio in alone.items():
        console.print(f"  {pair:<32} {ratio:6.2f}x", markup=False)
    speculated = result.get("speculate_by_path")
    if speculated and not any(speculated.values()):
        console.print("our engine decoded one token per forward (no speculation)")
    console.print("decode after the first token; answers that begin as an earlier one:")
    for path, row in result["paths"].items():
        decode, repeated = row.get("decode_ms_per_token"), row.get("repeated_answers")
        console.print(
            f"  {path:<20} {'-' if decode is None else f'{decode:.2f}':>8} ms/token"
            f"  {'-' if repeated is None else f'{repeated:.0%}':>5} repeated",
            markup=False,
        )
    for path, reason in result.get("unavailable", {}).items():
        console.print(f"[yellow]{path} left out[/]: {escape(reason)}")
    for path, binary in result.get("llama_server_by_path", {}).items():
        console.print(f"{path} served by {binary}", markup=False)
    if "machine" in result:
        console.print(f"machine: {machine_line(result['machine'])}", markup=False)


def summarize(baseline: Sequence[TurnRecord], ours: Sequence[TurnRecord]) -> dict[str, Any]:
    """The benchmark's figures from the two paths' per-turn records."""
    logical = sum(r.prompt_tokens + r.output_tokens for r in baseline)
    base_s = sum(r.seconds for r in baseline)
    ours_s = sum(r.seconds for r in ours)
    served = [r for r in ours if not r.semantic_hit]
    sent = sum(r.prompt_tokens for r in served)
    asks = [r for r in ours if r.fact_in_prompt is not None]
    base_asks = [r for r in baseline if r.fact_answered is not None]
    return {
        "baseline_seconds": round(base_s, 3),
        "ctxproto_seconds": round(ours_s, 3),
        "logical_tokens": logical,
        "effective_tps_baseline": round(logical / base_s, 2),
        "effective_tps_ctxproto": round(logical / ours_s, 2),
        "effective_tps_ratio": round(base_s / ours_s, 3),
        "prefill_tokens_baseline": sum(r.prefill_tokens for r in baseline),
        "prefill_tokens_ctxproto": sum(r.prefill_tokens for r in served),
        "prompt_tokens_baseline": sum(r.prompt_tokens for r in baseline),
        "prompt_tokens_ctxproto": sent,
        "ttft_p50_ms": {
            "baseline": ttft_percentile(baseline, 50),
            "ctxproto": ttft_percentile(ours, 50),
        },
        "ttft_p95_ms": {
            "baseline": ttft_percentile(baseline, 95),
            "ctxproto": ttft_percentile(ours, 95),
        },
        "prefix_hit_rate": round(1 - sum(r.prefill_tokens for r in served) / sent, 4)
        if sent
        else 0.0,
        "semantic_cache_hit_rate": round(sum(r.semantic_hit for r in ours) / len(ours), 4),
        "fact_retention": share([r.fact_in_prompt for r in asks]),
        "fact_accuracy_reader": {
            "baseline": share([r.fact_answered for r in base_asks]),
            "ctxproto": share([r.fact_answered for r in asks]),
        },
        "asks": [
            {
                "session": r.session,
                "turn": r.turn,
                "question": r.question,
                "fact_in_prompt": r.fact_in_prompt,
                "semantic_hit": r.semantic_hit,
                "answer": r.answer,
            }
            for r in asks
        ],
        "by_turns": _by_turns(baseline, ours),
    }


def _by_turns(baseline: Sequence[TurnRecord], ours: Sequence[TurnRecord]) -> list[dict[str, Any]]:
    """Cumulative figures after each turn index: how the speedup grows with length."""
    rows = []
    last = max(r.turn for r in baseline)
    for turn in range(1, last + 1):
        base = [r for r in baseline if r.turn <= turn]
        mine = [r for r in ours if r.turn <= turn]
        base_s = sum(r.seconds for r in base)
        mine_s = sum(r.seconds for r in mine)
        at_turn = [r for r in baseline if r.turn == turn]
        ours_at = [r for r in ours if r.turn == turn]
        rows.append(
            {
                "turn": turn,
                "baseline_prompt_tokens": sum(r.prompt_tokens for r in at_turn),
                "ctxproto_prompt_tokens": sum(r.prompt_tokens for r in ours_at),
                "ctxproto_prefill_tokens": sum(r.prefill_tokens for r in ours_at),
                "effective_tps_ratio": round(base_s / mine_s, 3) if mine_s else None,
            }
        )
    return rows


def plot_by_turns(rows: list[dict[str, Any]], path: Path) -> None:
    """Effective-TPS ratio and tokens per turn against conversation length."""
    from ctxproto._extras import require

    matplotlib = require("matplotlib", extra="eval")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = [r["turn"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(turns, [r["effective_tps_ratio"] for r in rows], marker="o")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set(xlabel="turns so far", ylabel="effective TPS ratio (ctxproto / baseline)")
    left.set_title("End-to-end speedup grows with conversation length")
    for key, label in (
        ("baseline_prompt_tokens", "baseline prompt"),
        ("ctxproto_prompt_tokens", "ctxproto prompt"),
        ("ctxproto_prefill_tokens", "ctxproto prefilled (after prefix cache)"),
    ):
        right.plot(turns, [r[key] for r in rows], label=label)
    right.set(xlabel="turn", ylabel="tokens (all sessions)")
    right.set_title("Tokens per turn")
    right.legend()
    fig.tight_layout()
    # PNG at exactly ``path``, whatever its suffix (savefig would add ".png" to a name
    # without one), written whole or not at all.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _warm_up() -> None:
    """Load the models before any clock starts, so neither path pays for loading."""
    from ctxproto.models.embedder import get_embedder
    from ctxproto.models.loader import load_causal_lm, load_tokenizer

    load_causal_lm()
    load_tokenizer()
    get_embedder().embed(["warm up"])
    get_counter("hf:default")
