"""The knowledge base and the `retriever` stage on a real store and the real embedder,
a FAISS folder and a PostgreSQL table alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ctxproto.bench.rag_workload import essays_with_facts, planted_facts
from ctxproto.cli.main import main
from ctxproto.context import Context
from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError
from ctxproto.messages import Message
from ctxproto.pipeline import Pipeline
from ctxproto.retrieval import KnowledgeBase
from ctxproto.stages.retriever import Retriever

DOCS = [
    Document(
        id="returns",
        text="# Returns\n\nItems can be returned within 30 days for a full refund.",
        metadata={"team": "support"},
    ),
    Document(
        id="shipping",
        text="# Shipping\n\nOrders ship within two business days from Berlin.",
        metadata={"team": "logistics"},
    ),
    Document(
        id="security",
        text="# Security\n\nEnable two-factor authentication in account settings.",
        metadata={"team": "support"},
    ),
    Document(
        id="pets",
        text="Our office allows dogs on Fridays. Cats stay at home.",
        metadata={"team": "hr"},
    ),
]


@pytest.fixture(scope="module", params=["faiss", "pgvector"])
def store_path(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedder: Any
) -> str:
    path = (
        str(tmp_path_factory.mktemp("kb"))
        if request.param == "faiss"
        else f"{request.getfixturevalue('postgres').url}?table=retriever_kb"
    )
    knowledge_base = KnowledgeBase(path, embedder=embedder)
    assert knowledge_base.add_documents(DOCS) == 4
    knowledge_base.save()
    return path


def test_query_finds_the_relevant_chunk_with_filters_and_threshold(
    store_path: str, embedder: Any
) -> None:
    knowledge_base = KnowledgeBase(store_path, embedder=embedder)
    found = knowledge_base.query("How many days do I have to send an item back?", k=2)
    assert found[0].metadata["doc_id"] == "returns"
    assert found[0].metadata["headings"] == ["Returns"]
    assert found[0].score is not None and found[0].score >= (found[1].score or 0)
    only_logistics = knowledge_base.query("send an item back", k=3, filters={"team": "logistics"})
    assert [d.metadata["doc_id"] for d in only_logistics] == ["shipping"]
    assert knowledge_base.query("quantum chromodynamics lattice", k=3, min_score=0.6) == []


def test_bad_documents_raise_and_leave_the_store_unchanged(store_path: str, embedder: Any) -> None:
    knowledge_base = KnowledgeBase(store_path, embedder=embedder)
    before = knowledge_base.store.chunk_count
    for bad in ("", "\x00\x01binary", "\ufffd" * 50):
        with pytest.raises(StoreError):
            knowledge_base.add_documents(
                [Document(id="ok", text="fine text."), Document(id="bad", text=bad)]
            )
    assert knowledge_base.store.chunk_count == before


def test_retriever_stage_adds_packed_chunks_after_request_documents(
    store_path: str, counter: Any
) -> None:
    stage = Retriever(store=str(store_path), k=3, max_tokens=40, reorder=True)
    context = Context(
        query=Message(role="user", content="How do I turn on two-factor authentication?"),
        documents=[Document(id="given", text="A document the request carried.")],
    )
    result = stage.run(context, counter)
    ids = [d.id for d in result.context.documents]
    assert ids[0] == "given"
    assert "security#0" in ids
    assert sum(counter.count(d.text) for d in result.context.documents[1:]) <= 40
    assert result.report.counters["kept"] == len(ids) - 1
    empty = stage.run(Context(), counter)
    assert empty.context.documents == []


def test_retriever_in_a_yaml_pipeline(store_path: str, tmp_path: Path) -> None:
    config = tmp_path / "rag.yaml"
    config.write_text(
        f"name: rag\nbudget:\n  max_prompt_tokens: 400\nstages:\n"
        f"  - type: retriever\n    init_parameters:\n      store: {store_path}\n      k: 2\n"
    )
    pipeline = Pipeline.from_yaml(config)
    result = pipeline.run(
        Context(query=Message(role="user", content="Can I bring my dog to work?"))
    )
    assert any(d.id.startswith("pets#") for d in result.context.documents)


def test_store_of_another_embedder_is_refused(store_path: str, embedder: Any) -> None:
    class OtherName:
        name = "someone-elses-model"
        dimension = embedder.dimension

    with pytest.raises(StoreError, match="someone-elses-model"):
        KnowledgeBase(store_path, embedder=OtherName())  # type: ignore[arg-type]


def test_index_command_builds_a_store_from_a_folder_and_jsonl(tmp_path: Path, capsys: Any) -> None:
    folder = tmp_path / "kb"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# A\n\nApples are red.")
    (folder / "sub" / "b.txt").write_text("Bananas are yellow.")
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    store = tmp_path / "store"
    assert main(["index", str(folder), "--store", str(store), "--json"]) == 0
    assert '"store_documents": 2' in capsys.readouterr().out
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"id": "c", "text": "Cherries are dark red."}\n')
    assert main(["index", str(jsonl), "--store", str(store), "--json"]) == 0
    assert '"store_documents": 3' in capsys.readouterr().out
    jsonl.write_text('{"id": "d"}\n')
    assert main(["index", str(jsonl), "--store", str(store)]) == 2
    assert "text" in capsys.readouterr().err
    (folder / "c.md").write_bytes(b"\xff\xfe\x00garbage")
    # In a folder, a file that is no UTF-8 text is skipped and listed; alone, refused.
    assert main(["index", str(folder), "--store", str(store)]) == 0
    assert "skipped unreadable" in capsys.readouterr().err
    assert main(["index", str(folder / "c.md"), "--store", str(store)]) == 2  # input to fix
    assert "UTF-8" in capsys.readouterr().err
    assert KnowledgeBase(store).store.count == 3


@pytest.mark.parametrize("kind", ["missing", "file", "empty folder"])
def test_a_store_that_is_not_there_fails_before_any_stage_runs(tmp_path: Path, kind: str) -> None:
    store = tmp_path / "kb"
    if kind == "file":
        store.write_text("not a store")
    elif kind == "empty folder":
        store.mkdir()
    pipeline = Pipeline.from_dict(
        {
            "stages": [
                {"type": "recency_window", "init_parameters": {"max_turns": 4}},
                {"type": "retriever", "init_parameters": {"store": str(store)}},
            ]
        },
        source="rag.yaml",
    )
    with pytest.raises(ConfigError) as info:
        pipeline.run(Context(query=Message(role="user", content="Can I bring my dog?")))
    message = str(info.value)
    assert message.startswith("rag.yaml")
    assert "stages[1].init_parameters.store" in message and "no store at" in message
    assert store.is_file() if kind == "file" else not (store / "manifest.json").exists()


def test_a_store_url_of_another_scheme_is_named_at_its_key() -> None:
    pipeline = Pipeline.from_dict(
        {"stages": [{"type": "retriever", "init_parameters": {"store": "s3://bucket/kb"}}]},
        source="rag.yaml",
    )
    with pytest.raises(ConfigError, match="no store lives at a 's3://' URL") as info:
        pipeline.warm_up()
    assert info.value.key == "stages[0].init_parameters.store"


def test_hybrid_retrieval_finds_answers_that_vectors_alone_rank_below_their_lookalikes(
    tmp_path: Path, embedder: Any, counter: Any
) -> None:
    # Regression (RAG chat workload, 77.5% retention): twelve facts of four forms
    # planted in three essays. Their questions differ from each other by one
    # rare word (the island, the colour), which dense search weighs too little.
    facts = planted_facts(12, seed=0)
    knowledge_base = KnowledgeBase(tmp_path / "kb", embedder=embedder, chunk_tokens=192)
    knowledge_base.add_documents(essays_with_facts(facts, essays=3, seed=0))
    knowledge_base.save()

    def answered(**parameters: Any) -> int:
        stage = Retriever(store=str(tmp_path / "kb"), k=3, fetch_k=6, **parameters)
        found = 0
        for fact in facts:
            context = Context(query=Message(role="user", content=fact.question))
            documents = stage.run(context, counter).context.documents
            found += any(fact.answer in d.text for d in documents)
        return found

    assert answered() < 12  # vectors only: some answers lose to same-phrased chunks
    assert answered(lexical_weight=0.5) == 12


def test_hybrid_scores_are_fused_and_floors_still_apply(store_path: str, embedder: Any) -> None:
    knowledge_base = KnowledgeBase(store_path, embedder=embedder)
    if store_path.startswith("postgresql"):
        with pytest.raises(ConfigError, match="lexical_weight"):
            knowledge_base.query("Berlin", k=2, lexical_weight=0.5)
        return
    found = knowledge_base.query("Which city do orders ship from? Berlin", k=4, lexical_weight=0.5)
    assert found[0].metadata["doc_id"] == "shipping"
    scores = [d.score or 0.0 for d in found]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores[0] == max(scores)
    assert knowledge_base.query("Berlin", k=4, lexical_weight=1.0, min_score=0.99) == []
    with pytest.raises(ConfigError, match="lexical_weight"):
        knowledge_base.query("Berlin", lexical_weight=1.5)


@pytest.mark.parametrize("weight", [-0.1, 1.5, "half"])
def test_a_bad_lexical_weight_is_a_config_error_naming_the_key(
    tmp_path: Path, weight: object
) -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict(
            {
                "stages": [
                    {
                        "type": "retriever",
                        "init_parameters": {"store": str(tmp_path), "lexical_weight": weight},
                    }
                ]
            },
            source="rag.yaml",
        )
    message = str(info.value)
    assert message.startswith("rag.yaml") and "lexical_weight" in message


def test_hybrid_retrieval_on_a_postgresql_store_fails_when_the_stage_warms_up(
    store_path: str,
) -> None:
    pipeline = Pipeline.from_dict(
        {
            "stages": [
                {
                    "type": "retriever",
                    "init_parameters": {"store": store_path, "lexical_weight": 0.5},
                }
            ]
        },
        source="rag.yaml",
    )
    query = Context(query=Message(role="user", content="Can I bring my dogs to the office?"))
    if not store_path.startswith("postgresql"):
        assert pipeline.run(query).context.documents[0].id.startswith("pets#")
        return
    with pytest.raises(ConfigError) as info:
        pipeline.run(query)
    assert "stages[0].init_parameters.lexical_weight" in str(info.value)


def test_a_running_retriever_searches_what_another_process_indexed_since(
    tmp_path: Path, embedder: Any, counter: Any
) -> None:
    """A folder store's reader reloads the generation saved since (pgvector reads the table)."""
    store = str(tmp_path / "kb")
    first = KnowledgeBase(store, embedder=embedder)
    first.add_documents(DOCS[:1])
    first.save()
    stage = Retriever(store=store, k=2)
    asked = "How do I turn on two-factor authentication?"
    question = Context(query=Message(role="user", content=asked))
    assert "security#0" not in [d.id for d in stage.run(question, counter).context.documents]
    indexer = KnowledgeBase(store, embedder=embedder)  # the indexing run, apart from the reader
    indexer.add_documents(DOCS)
    indexer.save()
    assert "security#0" in [d.id for d in stage.run(question, counter).context.documents]
    indexer.store.delete(["security"])
    indexer.save()
    assert "security#0" not in [d.id for d in stage.run(question, counter).context.documents]
