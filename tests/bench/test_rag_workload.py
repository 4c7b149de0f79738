"""The RAG chat workload: planted facts, fresh retrieval every turn, ctxproto's setup."""

from pathlib import Path

import pytest

from ctxproto.bench.chat_paths import build_chat_pipeline, ctxproto_turns
from ctxproto.bench.chat_workload import examples_dir
from ctxproto.bench.rag_workload import (
    RETRIEVAL,
    RETRIEVED_CHUNKS,
    build_rag_workload,
    essays_with_facts,
    knowledge_setup,
    planted_facts,
)
from ctxproto.runtime import ScriptedBackend


def test_planted_facts_ask_distinct_questions_and_are_deterministic():
    facts = planted_facts(40, seed=3)
    assert len({f.question for f in facts}) == 40
    assert facts == planted_facts(40, seed=3)


def test_each_fact_is_planted_once_at_a_sentence_end():
    facts = planted_facts(3, seed=1)
    documents = essays_with_facts(facts, essays=2, seed=1)
    assert len(documents) == 2
    text = " ".join(d.text for d in documents)
    for fact in facts:
        assert text.count(fact.statement) == 1
        before = text[: text.index(fact.statement)].rstrip()
        assert before == "" or before[-1] in ".!?"


@pytest.mark.models
def test_every_turn_retrieves_its_answer_and_ctxproto_sends_less_of_it(tmp_path: Path):
    store = tmp_path / "index"
    scripts = build_rag_workload(1, 3, store, essays=2, seed=0)
    turns = scripts[0].turns
    assert [t.kind for t in turns] == ["rag"] * 3
    assert turns[-1].asks == turns[0].asks  # the first fact, asked again at the end
    for turn in turns:
        assert turn.asks is not None
        assert len(turn.documents) == RETRIEVED_CHUNKS
        assert turn.asks.answer in turn.user_message

    backend = ScriptedBackend(lambda messages: "I do not know.")
    records = list(
        ctxproto_turns(
            scripts, "Answer briefly.", 4, examples_dir(), backend, knowledge=knowledge_setup(store)
        )
    )
    # The repeated question is answered from the semantic cache; the others from
    # prompts that hold their answer in fewer tokens than the naive chat sends.
    assert [r.semantic_hit for r in records] == [False, False, True]
    assert all(r.fact_in_prompt for r in records[:2])
    for turn, request in zip(turns[:2], backend.requests, strict=True):
        sent = " ".join(m["content"] for m in request.messages)
        assert len(sent) < len(turn.user_message) / 2
    # The retrieved text rides with the question; it never enters the history.
    assert turns[0].asks is not None
    history = backend.requests[1].messages[:-1]
    assert not any(turns[0].asks.statement in m["content"] for m in history)


def test_a_knowledge_setup_points_the_retriever_at_its_store(tmp_path: Path):
    pipeline = build_chat_pipeline(tmp_path, examples_dir(), knowledge_setup(tmp_path / "kb"))
    stages = pipeline.to_dict()["stages"]
    kinds = [s["type"] for s in stages]
    assert kinds[: kinds.index("retriever") + 2][-2:] == ["retriever", "relevance_filter"]
    retriever = stages[kinds.index("retriever")]["init_parameters"]
    assert retriever["store"] == str(tmp_path / "kb")
    assert retriever["k"] == RETRIEVED_CHUNKS
    # the peers' chunks come from the same query (build_rag_workload): both hybrid
    assert {key: retriever[key] for key in RETRIEVAL} == RETRIEVAL
    assert RETRIEVAL["lexical_weight"] > 0
    assert not (tmp_path / "retriever").exists()  # the bundled index is not built
