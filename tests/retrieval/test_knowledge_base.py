"""``KnowledgeBase`` from Python, on a folder store and the real embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ctxproto.documents import Document
from ctxproto.errors import ConfigError
from ctxproto.retrieval import KnowledgeBase


@pytest.mark.parametrize(
    ("arguments", "key"),
    [
        ({"k": 0}, "k"),
        ({"k": -1, "diversity": 0.0}, "k"),
        ({"fetch_k": 0}, "fetch_k"),
        ({"diversity": 1.5}, "diversity"),
        ({"diversity": -0.1}, "diversity"),
        ({"lexical_weight": 2.0}, "lexical_weight"),
    ],
)
def test_sizes_and_weights_out_of_range_are_config_errors_naming_the_key(
    tmp_path: Path, embedder: Any, arguments: dict[str, Any], key: str
) -> None:
    """As the ``retriever`` stage refuses them: ``k=-1`` returned every candidate but
    one, and ``diversity=1.5`` the least relevant chunks first."""
    knowledge_base = KnowledgeBase(tmp_path / "kb", embedder=embedder)
    knowledge_base.add_documents(
        [Document(id=f"d{n}", text=f"Fact number {n} is about topic {n}.") for n in range(6)]
    )
    with pytest.raises(ConfigError) as info:
        knowledge_base.query("Which fact is about topic 3?", **arguments)
    assert info.value.key == key


def test_metadata_changed_from_a_number_to_a_boolean_is_a_change(
    tmp_path: Path, embedder: Any
) -> None:
    """Python's equality holds ``True == 1``, and a document re-added with ``public:
    True`` where ``public: 1`` was stored was taken as unchanged and kept its old
    metadata, which a filter on ``True`` does not match (the stores keep them apart)."""
    knowledge_base = KnowledgeBase(tmp_path / "kb", embedder=embedder)
    text = "Refunds are paid within 14 days."
    knowledge_base.add_documents([Document(id="d", text=text, metadata={"public": 1})])
    knowledge_base.add_documents([Document(id="d", text=text, metadata={"public": True})])
    assert knowledge_base.unchanged_documents == 0
    (found,) = knowledge_base.query("refunds", k=1, filters={"public": True})
    assert found.metadata["public"] is True


@pytest.mark.parametrize("backend", ["faiss", "pgvector"])
def test_numbers_a_store_gives_back_in_another_form_are_unchanged(
    tmp_path: Path, request: pytest.FixtureRequest, embedder: Any, backend: str
) -> None:
    """PostgreSQL's ``numeric`` gives ``1e20`` back as the integer 10^20 and ``-0.0`` as
    0: compared as written, such a document was never unchanged on pgvector, and
    every run embedded it again and saved."""
    location = str(tmp_path / "kb") if backend == "faiss" else request.getfixturevalue("pg_url")
    document = Document(
        id="d",
        text="Uploads are capped by max_bytes.",
        metadata={"max_bytes": 1e20, "offset": -0.0, "ratio": 0.1, "flag": True},
    )
    first = KnowledgeBase(location, embedder=embedder)
    try:
        first.add_documents([document])
        first.save()
    finally:
        first.close()
    again = KnowledgeBase(location, embedder=embedder)
    try:
        assert again.add_documents([document]) == 0
        assert again.unchanged_documents == 1
    finally:
        again.close()
