"""A small terminal chatbot over the bundled knowledge base, showing what each turn saved.

    python examples/chatbot.py            # from the repository root, after `make install`

It loads examples/pipelines/chatbot.yaml (retrieval, semantic cache, checkpointed
summary, the bundled prefix-KV runtime), builds the knowledge-base index on first
use, and prints a one-line report after every answer. State lives under .ctxproto/
in the working directory, the conversation included: a new run continues it (and
says so) until /reset. Type /quit to leave.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console

from ctxproto.retrieval import KnowledgeBase, read_documents
from ctxproto.session import ChatSession

EXAMPLES = Path(__file__).resolve().parent
INDEX = Path(".ctxproto/knowledge-index")


def main() -> int:
    console = Console()
    if not (INDEX / "manifest.json").exists():
        with console.status("indexing examples/knowledge ..."):
            base = KnowledgeBase(INDEX)
            base.add_documents(read_documents(EXAMPLES / "knowledge"))
            base.save()
    with console.status("loading the models ..."):
        session = ChatSession.from_yaml(
            EXAMPLES / "pipelines" / "chatbot.yaml", session_id="terminal"
        )
    return chat(session, console)


def chat(session: ChatSession, console: Console) -> int:
    """The conversation loop: a question per line, the answer streamed, then its report."""
    console.print("[bold]Lumen Home support[/] (ctxproto demo bot). /quit to leave.")
    earlier = sum(message.role == "user" for message in session.history)
    if earlier:
        # The history is stored, so a restarted bot would otherwise answer a first
        # question with a prompt full of turns the user no longer sees.
        console.print(
            f"[dim]continuing an earlier run's conversation ({earlier} question"
            f"{'s' * (earlier != 1)}); /reset starts anew[/]"
        )
    while True:
        try:
            question = console.input("[bold cyan]you>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if question in ("/quit", "/exit"):
            break
        if question == "/reset":
            session.reset()
            console.print("[dim]conversation forgotten; the next question starts a new one[/]")
            continue
        if not question:
            continue
        console.print("[bold green]bot>[/] ", end="")
        for delta in session.stream(question):
            console.print(delta, end="", markup=False, highlight=False)
        console.print()
        turn = session.last_turn
        assert turn is not None
        r = turn.report
        # Retrieved documents can make a prompt longer than the chat it came from.
        change = (
            f"{r.tokens_saved} saved"
            if r.tokens_saved >= 0
            else f"{-r.tokens_saved} more, for the documents retrieved"
        )
        console.print(
            f"[dim]sent {r.prompt_tokens} tokens for a chat of {r.original_tokens} ({change})[/]"
        )
        console.print(
            f"[dim]prefix reused {r.cached_prefix_tokens}, cache"
            f" {'hit' if r.semantic_cache_hit else 'miss'}, TTFT {r.ttft_ms:.0f} ms,"
            f" {r.latency_ms:.0f} ms in all[/]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
