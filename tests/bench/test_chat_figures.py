"""The chat benchmarks' per-path figures: repeated questions, looping answers, decode rate."""

from ctxproto.bench.chat_figures import (
    cache_alone,
    cache_answerable,
    path_figures,
    repeated_answers,
)
from ctxproto.bench.chat_paths import TurnRecord


def turn(session: str, kind: str, question: str, seconds: float = 1.0) -> TurnRecord:
    return TurnRecord(session, 1, kind, 1000, 100, 10, 100.0, seconds, question=question)


def test_a_turn_repeats_a_question_its_session_or_the_shared_knowledge_asked_before():
    turns = [
        turn("a", "kb", "How long is the warranty?"),
        turn("a", "kb_repeat", "What is the warranty period?"),  # reworded: a repeat
        turn("a", "ask", "What is my order number?"),
        turn("a", "ask", "What is my order number?"),  # its session's again
        turn("b", "ask", "What is my order number?"),  # another session's order
        turn("b", "kb", "How long is the warranty?"),  # the shared knowledge base
        turn("b", "chat", "Tell me more."),
        turn("b", "chat", "Tell me more."),  # asks about whatever came before
        turn("b", "ask", ""),
        turn("b", "ask", ""),  # no text: nothing to match
    ]
    assert cache_answerable(turns) == [False, True, False, True, False, True] + [False] * 4


def test_the_cache_alone_frees_the_repeats_and_keeps_the_peers_time_on_the_rest():
    peer = [
        turn("a", "kb", "How long is the warranty?", 2.0),
        turn("a", "kb", "How long is the warranty?", 1.0),
        turn("a", "chat", "hello", 1.0),
    ]
    assert cache_alone(peer) == round(4.0 / 3.0, 3)
    assert cache_alone([turn("a", "kb_repeat", "Reworded?")]) is None  # nothing left to serve


def test_repeated_answers_are_first_sentences_seen_before_in_the_session():
    loop = "I'm here to assist you with any questions.  I'm happy to help."
    rows = [
        TurnRecord("a", 1, "chat", 10, 10, 5, 1.0, 1.0, answer=loop),
        TurnRecord(
            "a",
            2,
            "chat",
            10,
            10,
            5,
            1.0,
            1.0,
            answer="I'm here to assist you with\nany questions. Sure.",
        ),
        TurnRecord("b", 1, "chat", 10, 10, 5, 1.0, 1.0, answer=loop),  # another session
        TurnRecord("a", 3, "kb", 10, 0, 5, 1.0, 1.0, semantic_hit=True, answer=loop),
        TurnRecord("a", 4, "chat", 10, 10, 5, 1.0, 1.0, answer="It takes 2 days"),  # the whole
        TurnRecord("a", 5, "chat", 10, 10, 5, 1.0, 1.0, answer=""),
    ]
    assert repeated_answers(rows) == [False, True, False, None, False, None]
    # A repeated question may rightly get the same answer: not counted as a loop.
    again = [
        TurnRecord("a", 1, "kb", 10, 10, 5, 1.0, 1.0, question="Warranty?", answer=loop),
        TurnRecord("a", 2, "kb_repeat", 10, 10, 5, 1.0, 1.0, question="Guarantee?", answer=loop),
        TurnRecord("a", 3, "chat", 10, 10, 5, 1.0, 1.0, question="Hi", answer=loop),
    ]
    assert repeated_answers(again) == [False, None, True]


def test_the_decode_rate_leaves_out_the_first_token_and_cache_hits():
    rows = [
        TurnRecord("a", 1, "chat", 100, 100, 11, 100.0, 0.2, answer="One."),  # 10 ms a token
        TurnRecord("a", 2, "chat", 100, 100, 11, 100.0, 0.4, answer="Two."),  # 30 ms a token
        TurnRecord("a", 3, "kb", 100, 0, 11, 0.0, 0.001, semantic_hit=True, answer="One."),
        TurnRecord("a", 4, "chat", 100, 100, 1, 100.0, 5.0, answer="Ok"),  # no later token
    ]
    figures = path_figures(rows, logical=300)
    assert figures["decode_ms_per_token"] == 20.0
    assert figures["repeated_answers"] == 0.0
