"""``ctxproto bench rag-retention [--json]``: the RAG workload's answer retention, no model.

Builds the index of ``ctxproto bench suite --workloads rag`` and asks every
planted question of its sessions the way the workload does, without
generating anything. Per ask it checks whether the answer span is in

- ``retrieved``: the chunks the full-history peers get in their user message;
- ``placed``: what ctxproto's retriever and relevance filter
  (``rag_workload.knowledge_setup``) leave to place with the question;

and whether ctxproto's retriever returned the peers' chunks (``same_chunks``).
Retention in the suite can only be lower than ``placed`` where the prompt
budget cuts documents, so this answers in two minutes (most of it embedding
the essays) what a suite run answers in an hour. ``--lexical-weight 0``
measures dense retrieval alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from ctxproto.bench.chat_workload import examples_dir
from ctxproto.bench.machine import print_figures
from ctxproto.bench.rag_workload import (
    RETRIEVAL,
    asked_facts,
    build_rag_index,
    knowledge_setup,
    workload_facts,
)
from ctxproto.cli.arguments import int_at_least, non_negative_float
from ctxproto.context import Context
from ctxproto.documents import Document
from ctxproto.messages import Message
from ctxproto.pipeline import Pipeline

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rag-retention", help="answer retention of the RAG workload's retrieval, no model"
    )
    parser.add_argument("--sessions", type=int_at_least(1), default=2, help="chat sessions")
    parser.add_argument("--turns", type=int_at_least(1), default=20, help="user turns per session")
    parser.add_argument(
        "--essays", type=int_at_least(1), default=None, help="essays indexed (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated chats")
    parser.add_argument(
        "--lexical-weight",
        type=non_negative_float,
        default=RETRIEVAL["lexical_weight"],
        help="the retriever's share of BM25 (0: vectors only)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    result = run(
        args.sessions,
        args.turns,
        essays=args.essays,
        seed=args.seed,
        lexical_weight=args.lexical_weight,
    )
    return print_figures(result, as_json=args.json)


def run(
    sessions: int,
    turns: int,
    *,
    essays: int | None = None,
    seed: int = 0,
    lexical_weight: float = RETRIEVAL["lexical_weight"],
) -> dict[str, Any]:
    """Retention of the peers' chunks and of ctxproto's placed text, and the misses."""
    retrieval = {**RETRIEVAL, "lexical_weight": lexical_weight}
    with tempfile.TemporaryDirectory(prefix="ctxproto-rag-retention-") as tmp:
        store = Path(tmp) / "index"
        pipeline = _retrieval_pipeline(store, lexical_weight)  # bad parameters fail here
        start = time.perf_counter()
        facts = workload_facts(sessions, turns, seed)
        base = build_rag_index(store, facts, essays=essays, seed=seed)
        index_seconds = time.perf_counter() - start
        pipeline.warm_up()
        asks = [fact for _, asked in asked_facts(facts, sessions, turns) for fact in asked]
        retrieved = placed = same = retrieved_tokens = placed_tokens = 0
        misses = []
        for fact in asks:
            chunks = base.query(fact.question, **retrieval)
            fetched, kept = _fetched_and_kept(pipeline, fact.question)
            in_chunks = any(fact.answer in c.text for c in chunks)
            in_placed = any(fact.answer in d.text for d in kept)
            retrieved += in_chunks
            placed += in_placed
            same += [c.id for c in chunks] == [d.id for d in fetched]
            retrieved_tokens += sum(pipeline.counter.count(c.text) for c in chunks)
            placed_tokens += sum(pipeline.counter.count(d.text) for d in kept)
            if not in_placed:
                misses.append({"question": fact.question, "in_retrieved": in_chunks})
    return {
        "asks": len(asks),
        "lexical_weight": lexical_weight,
        "retrieved": retrieved / len(asks),
        "placed": placed / len(asks),
        "same_chunks": same / len(asks),
        "retrieved_tokens_per_ask": round(retrieved_tokens / len(asks)),
        "placed_tokens_per_ask": round(placed_tokens / len(asks)),
        "index_seconds": round(index_seconds, 1),
        "misses": misses,
    }


def _retrieval_pipeline(store: Path, lexical_weight: float) -> Pipeline:
    """ctxproto's retrieval stages of the workload, counting the chat pipeline's tokens."""
    from ctxproto.session import load_chatbot_config

    setup = knowledge_setup(store)
    chatbot, _ = load_chatbot_config(examples_dir() / "pipelines" / "chatbot.yaml")
    retriever = {**setup.retriever, "store": str(store), "lexical_weight": lexical_weight}
    return Pipeline.from_dict(
        {
            "name": "rag-retention",
            "tokenizer": chatbot["tokenizer"],
            "stages": [{"type": "retriever", "init_parameters": retriever}, *setup.after_retriever],
        }
    )


def _fetched_and_kept(pipeline: Pipeline, question: str) -> tuple[list[Document], list[Document]]:
    """The retriever's chunks, and the documents left after the stages that follow it."""
    context = Context(query=Message(role="user", content=question))
    fetched: list[Document] = []
    for index, stage in enumerate(pipeline.stages):
        context = stage.run(context, pipeline.counter).context
        if index == 0:
            fetched = context.documents
    return fetched, context.documents
