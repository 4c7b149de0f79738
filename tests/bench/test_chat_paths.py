"""How the chat paths serve scripts: round robin, RAG documents kept in the history, and
what counts as a fact kept."""

import pytest

from ctxproto.bench.chat_paths import ctxproto_turns, full_history_turns, serving_order
from ctxproto.bench.chat_workload import ChatTurn, SessionScript, examples_dir
from ctxproto.eval.facts import Fact
from ctxproto.runtime import ScriptedBackend
from ctxproto.tokens import get_counter


def script(name: str, turns: int) -> SessionScript:
    return SessionScript(name, tuple(ChatTurn(f"{name} turn {t}", "chat") for t in range(turns)))


def test_sessions_are_served_one_after_the_other_by_default():
    scripts = [script("a", 2), script("b", 2)]
    assert list(serving_order(scripts)) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_round_robin_gives_every_session_its_next_turn_in_turn_and_skips_finished_ones():
    scripts = [script("a", 3), script("b", 1), script("c", 2)]
    assert list(serving_order(scripts, round_robin=True)) == [
        (0, 0),
        (1, 0),
        (2, 0),
        (0, 1),
        (2, 1),
        (0, 2),
    ]


def test_round_robin_keeps_each_session_to_its_own_history():
    backend = ScriptedBackend(lambda messages: "ok")
    scripts = [script("a", 2), script("b", 2)]
    records = list(
        full_history_turns(scripts, "system", 4, backend, get_counter(), round_robin=True)
    )
    assert [(r.session, r.turn) for r in records] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    last = [m["content"] for m in backend.requests[-1].messages]
    assert last == ["system", "b turn 0", "ok", "b turn 1"]


def test_a_rag_turn_sends_its_documents_and_the_history_keeps_them_until_the_window():
    fact = Fact("code", "The code is QX-1.", "What is the code?", "QX-1")
    filler = "Words about something else entirely. " * 40
    turns = (
        ChatTurn(fact.question, "rag", fact, documents=("The code is QX-1.", "Other text.")),
        ChatTurn("And the weather?", "rag", documents=(filler,)),
        ChatTurn("And again?", "rag", documents=(filler,)),
    )
    assert turns[0].user_message.startswith("Reference documents:\n\n[1] The code is QX-1.")
    assert turns[0].user_message.endswith("Question: What is the code?")
    assert ChatTurn("plain", "chat").user_message == "plain"

    counter = get_counter()
    window = counter.count(turns[1].user_message) * 2 + 30
    backend = ScriptedBackend(lambda messages: "fine")
    records = list(
        full_history_turns(
            [SessionScript("s", turns, (fact,))],
            "sys",
            4,
            backend,
            counter,
            window_tokens=window,
        )
    )
    assert records[0].fact_in_prompt is True
    second = " ".join(m["content"] for m in backend.requests[1].messages)
    assert "The code is QX-1." in second  # kept in the history, as a naive RAG chat does
    third = " ".join(m["content"] for m in backend.requests[2].messages)
    assert "The code is QX-1." not in third  # dropped once the window is full


@pytest.mark.models
def test_a_cache_hit_keeps_a_fact_when_the_answer_it_replays_was_written_with_it():
    """The model misreads the fact; its answer, replayed from the semantic cache, is
    still an answer written with the fact in the prompt: retention is not reading."""
    question = "How do I factory-reset a Lumen bulb?"  # answered by the bundled knowledge
    fact = Fact("kb", "", question, "off and on five times")
    turns = (ChatTurn(question, "ask", fact), ChatTurn(question, "ask", fact))
    backend = ScriptedBackend(lambda messages: "Switch it off and on three times.")
    records = list(
        ctxproto_turns([SessionScript("s", turns, (fact,))], "sys", 8, examples_dir(), backend)
    )
    asked, replayed = records
    assert not asked.semantic_hit and asked.fact_in_prompt is True
    assert replayed.semantic_hit and replayed.answer == asked.answer
    assert replayed.fact_in_prompt is True


@pytest.mark.models
def test_a_knowledge_setup_replaces_the_chatbots_document_filter(tmp_path):
    """The RAG workload compresses what it retrieves its own way (rate 0.3), instead of,
    not on top of, ``chatbot.yaml``'s filter (rate 0.5)."""
    from ctxproto.bench.chat_paths import KnowledgeSetup, build_chat_pipeline
    from ctxproto.bench.rag_workload import knowledge_setup
    from ctxproto.stages.relevance_filter import RelevanceFilter

    plain = build_chat_pipeline(tmp_path / "plain", examples_dir())
    own = [s for s in plain.stages if isinstance(s, RelevanceFilter)]
    assert [f.rate for f in own] == [0.5]
    setup: KnowledgeSetup = knowledge_setup(tmp_path / "store")
    rag = build_chat_pipeline(tmp_path / "rag", examples_dir(), setup)
    filters = [s for s in rag.stages if isinstance(s, RelevanceFilter)]
    assert [f.rate for f in filters] == [0.3]
    assert [s.type_name for s in rag.stages].index("relevance_filter") == 1
