"""The `semantic_cache` stage: hits end the pipeline, misses are stored after generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ctxproto.context import ChatRequest, Context
from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError
from ctxproto.messages import Message
from ctxproto.pipeline import Pipeline
from ctxproto.stages.recency_window import RecencyWindow
from ctxproto.stages.semantic_cache import SemanticCacheLookup


def _chat(*turns: str, tenant: str = "default") -> ChatRequest:
    roles = ["user", "assistant"]
    messages = [Message(role=roles[i % 2], content=t) for i, t in enumerate(turns)]
    return ChatRequest(messages=messages, tenant_id=tenant)


def test_miss_then_store_then_hit_ends_the_pipeline(tmp_path: Path) -> None:
    lookup = SemanticCacheLookup(path=str(tmp_path), scope="query")
    pipeline = Pipeline([lookup, RecencyWindow(max_turns=4)])
    first = pipeline.run(_chat("How do I reset my password?"))
    assert first.answer is None and first.prompt is not None
    assert first.reports[0].counters["hit"] == 0
    lookup.store(first.context, "Click 'Forgot password'.")
    second = pipeline.run(_chat("I forgot my password, how can I reset it?"))
    assert second.answer == "Click 'Forgot password'."
    assert second.prompt is None
    assert [r.name for r in second.reports] == ["semantic_cache"]
    assert (
        second.context.metadata["semantic_cache"]["matched_query"] == "How do I reset my password?"
    )


def test_an_answer_the_model_already_gave_in_the_conversation_is_not_cached(
    tmp_path: Path,
) -> None:
    """A model caught in a loop answers every question alike; cached, the non-answer would
    reach the next user who asks."""
    lookup = SemanticCacheLookup(path=str(tmp_path), scope="query")
    pipeline = Pipeline([lookup])
    loop = "I'm here to assist you with any questions or issues you're facing."
    asked = pipeline.run(_chat("Hi there", loop, "How long does express shipping take?"))
    pipeline.after_answer(asked, f" {loop}\n")
    assert pipeline.run(_chat("How long does express shipping take?")).answer is None
    pipeline.after_answer(asked, "Express shipping takes 1 to 2 business days.")
    hit = pipeline.run(_chat("How long does express shipping take?"))
    assert hit.answer == "Express shipping takes 1 to 2 business days."
    # What the caller files explicitly is filed.
    other = pipeline.run(_chat("Hi there", loop, "Do you ship to Canada?"))
    assert lookup.store(other.context, loop) is not None


def test_conversation_scope_keeps_follow_ups_apart(tmp_path: Path) -> None:
    """GPTCache issue #8: "how old is he?" after talking about two different people."""
    lookup = SemanticCacheLookup(path=str(tmp_path), scope="conversation", context_turns=2)
    pipeline = Pipeline([lookup])
    bob = _chat("Who is Bob Dylan?", "A singer-songwriter born in 1941.", "How old is he?")
    obama = _chat("Who is Barack Obama?", "The 44th US president, born in 1961.", "How old is he?")
    result = pipeline.run(bob)
    lookup.store(result.context, "He was born in 1941.")
    assert pipeline.run(obama).answer is None
    assert pipeline.run(bob).answer == "He was born in 1941."


def test_documents_scope_and_source_invalidation(tmp_path: Path) -> None:
    lookup = SemanticCacheLookup(path=str(tmp_path), scope="documents")
    docs = [Document(id="policy#0", text="Returns within 30 days.", source="policy.md")]
    context = Context(
        query=Message(role="user", content="What is the return window?"), documents=docs
    )
    miss = lookup.run(context)
    assert miss.context.answer is None
    lookup.store(miss.context, "30 days.")
    assert lookup.run(context).context.answer == "30 days."
    other_docs = context.model_copy(update={"documents": [Document(id="faq#3", text="...")]})
    assert lookup.run(other_docs).context.answer is None
    assert lookup.cache.invalidate(source="policy.md") == 1
    assert lookup.run(context).context.answer is None


def test_documents_scope_skips_questions_no_document_supports(tmp_path: Path) -> None:
    """A question answered from the conversation must not be shared across conversations."""
    lookup = SemanticCacheLookup(path=str(tmp_path), scope="documents")
    alice = Context(
        query=Message(role="user", content="What is my order number?"),
        history=[Message(role="user", content="My order number is ORD-1.")],
    )
    result = lookup.run(alice)
    assert result.report.counters["skipped"] == 1
    assert lookup.store(result.context, "ORD-1") is None
    bob = alice.model_copy(update={"history": [Message(role="user", content="Mine is ORD-2.")]})
    assert lookup.run(bob).context.answer is None
    assert len(lookup.cache) == 0


def test_personal_questions_stay_in_their_session(tmp_path: Path) -> None:
    lookup = SemanticCacheLookup(path=str(tmp_path), scope="documents")
    docs = [Document(id="orders#0", text="Order numbers start with ORD.")]
    ask = Message(role="user", content="What is my order number?")
    alice = Context(query=ask, documents=docs, session_id="alice")
    lookup.store(lookup.run(alice).context, "ORD-1")
    assert lookup.run(alice).context.answer == "ORD-1"
    assert lookup.run(alice.model_copy(update={"session_id": "bob"})).context.answer is None
    general = Message(role="user", content="How do I find an order number?")
    first = lookup.run(Context(query=general, documents=docs, session_id="alice"))
    lookup.store(first.context, "In the app under Orders.")
    shared = lookup.run(Context(query=general, documents=docs, session_id="bob"))
    assert shared.context.answer == "In the app under Orders."


def test_tenants_are_namespaces(tmp_path: Path) -> None:
    lookup = SemanticCacheLookup(path=str(tmp_path), scope="query")
    pipeline = Pipeline([lookup])
    result = pipeline.run(_chat("What is our VPN address?", tenant="acme"))
    lookup.store(result.context, "vpn.acme.example")
    assert pipeline.run(_chat("What is our VPN address?", tenant="globex")).answer is None
    assert (
        pipeline.run(_chat("What is our VPN address?", tenant="acme")).answer == "vpn.acme.example"
    )


def test_store_needs_a_looked_up_context_and_config_is_validated(tmp_path: Path) -> None:
    lookup = SemanticCacheLookup(path=str(tmp_path))
    with pytest.raises(StoreError, match="semantic_cache"):
        lookup.store(Context(query=Message(role="user", content="hi")), "hello")
    with pytest.raises(ValueError):
        SemanticCacheLookup(path=str(tmp_path), scope="everything")
    empty = lookup.run(Context())
    assert empty.report.counters["skipped"] == 1


def test_yaml_round_trip(tmp_path: Path, counter: Any) -> None:
    config = tmp_path / "cached.yaml"
    config.write_text(
        "name: cached\nstages:\n  - type: semantic_cache\n    init_parameters:\n"
        f"      path: {tmp_path / 'cache'}\n      threshold: 0.75\n      ttl: 3600\n"
    )
    pipeline = Pipeline.from_yaml(config)
    stage = pipeline.stages[0]
    assert isinstance(stage, SemanticCacheLookup) and stage.threshold == 0.75 and stage.ttl == 3600
    assert Pipeline.from_dict(pipeline.to_dict()).to_dict() == pipeline.to_dict()


@pytest.mark.parametrize(
    ("written", "meant"),
    [("true", "rules"), ("false", "off"), ("learned", "learned"), ("rules", "rules")],
)
def test_guard_in_yaml_and_the_old_boolean_switch(
    tmp_path: Path, counter: Any, written: str, meant: str
) -> None:
    config = tmp_path / "cached.yaml"
    config.write_text(
        "name: cached\nstages:\n  - type: semantic_cache\n    init_parameters:\n"
        f"      path: {tmp_path / 'cache'}\n      guard: {written}\n"
    )
    pipeline = Pipeline.from_yaml(config)
    stage = pipeline.stages[0]
    assert isinstance(stage, SemanticCacheLookup) and stage.guard == meant
    assert stage.cache.guard == meant
    assert Pipeline.from_dict(pipeline.to_dict()).to_dict() == pipeline.to_dict()


def test_an_unknown_guard_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "cached.yaml"
    config.write_text(
        "name: cached\nstages:\n  - type: semantic_cache\n    init_parameters:\n"
        f"      path: {tmp_path / 'cache'}\n      guard: strict\n"
    )
    with pytest.raises(ConfigError, match="guard") as raised:
        Pipeline.from_yaml(config)
    assert str(config) in str(raised.value)
