"""``ctxproto demo``: a short chat benchmark, turn by turn, on the embedded models.

One support conversation (real user prompts, facts stated early and asked
later, knowledge-base questions asked twice) is served on the same model:
plainly (full history, no caches), through ctxproto (retrieval, semantic
cache, checkpointed summary, prefix-KV engine), and by the full-history peers
users would otherwise run — the bundled engine with its prefix cache, and
llama.cpp's server when one can run here. Each turn is one line (what the user
said, the tokens plain and ctxproto computed, the time to the first token)
with ctxproto's answer below it; the closing summary gives the effective
tokens per second of each, and ctxproto's ratio against the best peer: the
honest figure, since prefix caching alone already beats the plain baseline.

Rendering is a function of the benchmark's turn records and the console width
(``turn_lines``, ``summary``), so it is tested at 80 and 120 columns without
running a model.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from ctxproto.cli.arguments import int_at_least
from ctxproto.cli.interrupt import stoppable

if TYPE_CHECKING:
    from ctxproto.bench.chat_paths import TurnRecord

__all__ = ["header_lines", "register", "summary", "turn_lines"]

_KIND = 6
_LEAD = 3 + _KIND + 1
"""Cells before the question: the turn number and its kind."""
_KIND_LABELS = {"kb_repeat": "repeat"}
"""Shorter names for the workload's turn kinds that would not fit."""
_PEER_LABELS = {
    "generate": "plain generate",
    "engine": "engine + prefix cache",
    "llama_cpp": "llama.cpp + prompt cache",
}
"""The full-history peers as the summary names them."""
_PATHS = ("generate", "engine", "llama_cpp", "ctxproto")
_TOKENS = 6
_SECONDS = 7
_FIGURES = 2 + (_TOKENS + 3 + _TOKENS) + 2 + (_SECONDS + 3 + _SECONDS)
"""Cells after the question: tokens computed and time to first token, both ways."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a short chat served plainly and through ctxproto, turn by turn",
        description="One support chat, served by our engine with its prefix cache and "
        "full history, and through ctxproto, turn by turn, with the ratio at the end.",
    )
    parser.add_argument(
        "--turns", type=int_at_least(1), default=10, help="user turns (default: %(default)s)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int_at_least(1),
        default=24,
        help="tokens per answer at most (default: %(default)s)",
    )
    # SIGTERM read as Ctrl-C, as for `ctxproto bench`: the llama.cpp server the demo
    # started is stopped, not left running, when the demo is stopped with kill.
    parser.set_defaults(handler=stoppable(handle))


def handle(args: argparse.Namespace) -> int:
    from ctxproto.bench.chat import run_chat_benchmark

    console = Console()
    console.rule("[bold]ctxproto demo[/]: one support chat, ctxproto vs its peers, SmolLM2-135M")
    console.print(
        "[dim]Each turn: what the user says; tokens the model computed and time to its "
        "first token, plain baseline → ctxproto; below it, ctxproto's answer.[/]"
    )
    with _quiet_library_notices(), Progress(console=console, transient=True) as progress:
        header_printed = False

        def show(base: TurnRecord, ours: TurnRecord) -> None:
            nonlocal header_printed
            if not header_printed:
                _print(progress.console, header_lines(progress.console.width))
                header_printed = True
            _print(progress.console, turn_lines(base, ours, progress.console.width))

        result = run_chat_benchmark(
            args.turns,
            1,
            args.max_new_tokens,
            seed=0,
            progress=progress,
            on_turn=show,
            paths=_PATHS,
        )
    console.print()
    console.print(summary(result))
    return 0


@contextmanager
def _quiet_library_notices() -> Iterator[None]:
    """Hide libraries' notices about their own future API changes for the demo's run.

    They address whoever maintains the calling code (and are fixed there), not
    someone trying ctxproto for the first time; other warnings still show.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _print(console: Console, lines: list[Text]) -> None:
    for line in lines:
        console.print(line, no_wrap=True, overflow="ellipsis")


def header_lines(width: int) -> list[Text]:
    """Column titles for ``turn_lines`` at ``width`` cells."""
    question = _question_width(width)
    title = Text(" " * _LEAD) + _fit("user says", question)
    title.append(f"  {'tokens computed':>{_TOKENS * 2 + 3}}  {'first token':>{_SECONDS * 2 + 3}}")
    title.stylize("bold")
    return [_crop(title, width)]


def turn_lines(base: TurnRecord, ours: TurnRecord, width: int) -> list[Text]:
    """One turn at ``width`` cells: a line of figures, then ctxproto's answer in one or two."""
    line = Text(f"{ours.turn:>2} ", style="bold")
    kind = _fit(_KIND_LABELS.get(ours.kind, ours.kind), _KIND)
    kind.stylize("cyan")
    line.append(kind + " ")
    line.append(_fit(ours.question, _question_width(width)))
    line.append(f"  {base.prefill_tokens:>{_TOKENS},} → ")
    line.append(f"{ours.prefill_tokens:>{_TOKENS},}", style="bold green")
    line.append(f"  {_duration(base.ttft_ms):>{_SECONDS}} → ")
    line.append(f"{_duration(ours.ttft_ms):>{_SECONDS}}", style="bold green")
    label = "bot (semantic cache): " if ours.semantic_hit else "bot: "
    answer = [_crop(text, width) for text in _answer_lines(label, ours.answer, width)]
    return [_crop(line, width), *answer]


def summary(result: dict[str, Any]) -> RenderableType:
    """The closing figures: tokens computed, median TTFT, effective tokens per second."""
    base, ours = result["prefill_tokens_baseline"], result["prefill_tokens_ctxproto"]
    ttft = result["ttft_p50_ms"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row(
        "tokens computed",
        f"baseline {base:,}, ctxproto {ours:,} "
        f"([bold green]{base - ours:,} saved[/]; prefix reuse "
        f"{result['prefix_hit_rate']:.0%}, semantic-cache hits "
        f"{result['semantic_cache_hit_rate']:.0%})",
    )
    grid.add_row(
        "median first token",
        f"baseline {_duration(ttft['baseline'])}, ctxproto {_duration(ttft['ctxproto'])}",
    )
    grid.add_row(
        "effective TPS",
        f"baseline {result['effective_tps_baseline']:,.1f}, ctxproto "
        f"{result['effective_tps_ctxproto']:,.1f} tokens/s → "
        f"[bold green]{result['effective_tps_ratio']:.1f}x[/] (facts kept in the prompt "
        f"when asked: {result['fact_retention']:.0%})",
    )
    headline = result.get("headline")
    if headline is not None:
        peer = headline["best_full_history_peer"]
        tps = result["paths"][peer]["effective_tps"] or 0.0
        mine = result["paths"]["ctxproto"]["effective_tps"] or 0.0
        grid.add_row(
            "vs the best peer",
            f"{_PEER_LABELS.get(peer, peer)} {tps:,.1f}, ctxproto {mine:,.1f} tokens/s → "
            f"[bold green]{headline['ratio']:.1f}x[/]",
        )
    for path, reason in result.get("unavailable", {}).items():
        grid.add_row("", f"[dim]{_PEER_LABELS.get(path, path)} not run: {reason}[/]")
    grid.add_row(
        "",
        "[dim]Figures vary with the machine and its load; `ctxproto bench chat --json` "
        "runs the full benchmark (docs/benchmarks.md).[/]",
    )
    return grid


def _question_width(width: int) -> int:
    return max(width - _LEAD - _FIGURES, 8)


def _fit(text: str, width: int) -> Text:
    """``text`` on one line of exactly ``width`` cells: whitespace folded, cut with an ellipsis."""
    fitted = Text(" ".join(text.split()))
    fitted.truncate(width, overflow="ellipsis", pad=True)
    return fitted


def _crop(text: Text, width: int) -> Text:
    text.truncate(width, overflow="ellipsis")
    return text


def _answer_lines(label: str, answer: str, width: int) -> list[Text]:
    """``label`` and the answer under the question, in at most two lines, the second cut."""
    room = max(width - _LEAD, 16)
    words = answer.split() or ["(empty)"]
    first = label
    while words and cell_len(f"{first}{words[0]} ") <= room:
        first += f"{words.pop(0)} "
    lines = [Text(" " * _LEAD) + Text(first.rstrip(), style="dim")]
    lines[0].stylize("bold", _LEAD, _LEAD + len(label))
    if words:
        rest = Text(" " * (_LEAD + len(label))) + _fit(" ".join(words), room - len(label))
        rest.stylize("dim")
        rest.rstrip()
        lines.append(rest)
    return lines


def _duration(ms: float) -> str:
    return f"{ms:,.0f} ms" if ms < 1000 else f"{ms / 1000:,.1f} s"
