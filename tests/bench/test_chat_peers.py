"""The peers of ``ctxproto bench chat``: ratios, the history window, llama.cpp's server."""

from typing import Any

import pytest

from ctxproto.bench.chat import cache_answerable, ceiling, compare_paths, parse_paths, run_paths
from ctxproto.bench.chat_paths import TurnRecord
from ctxproto.bench.chat_workload import ChatTurn, SessionScript
from ctxproto.bench.llama_server import LlamaServer
from ctxproto.errors import BackendError, ConfigError
from ctxproto.eval.facts import Fact


def rows(seconds: list[float], prompt: int = 100) -> list[TurnRecord]:
    return [
        TurnRecord("s", i + 1, "chat", prompt, prompt, 10, 1.0, s) for i, s in enumerate(seconds)
    ]


def test_headline_is_against_the_fastest_full_history_peer():
    records = {
        "generate": rows([4.0, 4.0]),
        "engine": rows([1.0, 1.0]),
        "llama_cpp": rows([0.5, 0.5]),
        "ctxproto": rows([0.5, 0.25]),
        "ctxproto_llama_cpp": rows([0.25, 0.25]),
    }
    result = compare_paths(records)
    assert result["headline"] == {
        "best_full_history_peer": "llama_cpp",
        "ratio": round(1 / 0.75, 3),
    }
    assert result["ratios"]["ctxproto/generate"] == round(8 / 0.75, 3)
    assert result["ratios"]["ctxproto_llama_cpp/llama_cpp"] == 2.0
    assert len(result["ratios"]) == 6
    # Every path is credited with the generate path's logical tokens.
    assert result["paths"]["engine"]["effective_tps"] == round(220 / 2.0, 2)


def test_the_ceiling_frees_repeated_questions_and_keeps_the_peers_time_on_the_rest():
    def turn(session: str, kind: str, question: str, ttft_ms: float, prefill: int) -> TurnRecord:
        return TurnRecord(session, 1, kind, 1000, prefill, 10, ttft_ms, 1.0, question=question)

    peer = [
        turn("a", "kb", "How long is the warranty?", 200, 300),
        turn("a", "chat", "hello", 100, 40),
        turn("a", "kb_repeat", "What is the warranty period?", 100, 40),  # reworded: free
        turn("a", "ask", "What is my order number?", 100, 40),
        turn("a", "ask", "What is my order number?", 100, 40),  # its session's again: free
        turn("b", "ask", "What is my order number?", 100, 40),  # another session's order
        turn("b", "kb", "How long is the warranty?", 300, 500),  # the shared base: free
        turn("b", "chat", "hello", 500, 400),  # chat is no shared knowledge
        turn("b", "chat", "", 100, 40),  # no text: nothing to match
        turn("b", "chat", "", 100, 40),
    ]
    assert cache_answerable(peer) == [False, False, True, False, True, False, True] + [False] * 3
    bound = ceiling(peer)
    assert bound["cache_answerable_turns"] == 3
    assert bound["same_work"] == round(10 / 7, 3)
    # The rest at the warm median of 100 ms to the first token: 0.1 s off the first
    # turn, 0.4 s off the cold chat turn.
    assert bound["new_tokens_only"] == round(10 / 6.5, 3)


def test_compare_paths_gives_the_ceiling_against_every_full_history_peer():
    records = {"engine": rows([1.0, 1.0]), "ctxproto": rows([0.5, 0.5])}
    assert compare_paths(records)["ceiling"] == {"engine": ceiling(records["engine"])}


def test_a_server_that_cannot_start_is_a_backend_error_and_leaves_no_process(tmp_path):
    missing = tmp_path / "not-a-model.gguf"
    missing.write_bytes(b"not a gguf file")
    server = LlamaServer(missing, startup_timeout_s=60)
    with pytest.raises(BackendError, match="llama-server"):
        server.start()
    assert server._process is None


@pytest.mark.models
@pytest.mark.slow
def test_full_history_peers_drop_the_oldest_turns_to_fit_the_window():
    """With a small window the early fact leaves the full-history prompt; ctxproto keeps it."""
    fact = Fact(
        "city", "I live in Halifax, if that matters for delivery.", "Where do I live?", "Halifax"
    )
    chatter = "Tell me something interesting about the history of tea in a few sentences."
    turns = (
        ChatTurn(fact.statement, "fact"),
        *(ChatTurn(f"{chatter} ({i})", "chat") for i in range(8)),
        ChatTurn(fact.question, "ask", fact),
    )
    result: dict[str, Any] = run_paths(
        [SessionScript("s", turns, (fact,))],
        max_new_tokens=4,
        # `generate` windows its history the same way (one helper for both); leaving it
        # out keeps this test short.
        paths=("engine", "ctxproto"),
        window_tokens=600,
    )
    figures = result["paths"]
    assert figures["engine"]["fact_retention"] == 0.0
    assert figures["ctxproto"]["fact_retention"] == 1.0
    assert set(result["ratios"]) == {"ctxproto/engine"}


def test_paths_need_ctxproto_and_one_full_history_peer_not_generate_itself():
    assert parse_paths("engine,llama_cpp,ctxproto,ctxproto_llama_cpp") == (
        "engine",
        "llama_cpp",
        "ctxproto",
        "ctxproto_llama_cpp",
    )
    for bad in ("engine,llama_cpp", "ctxproto,ctxproto_llama_cpp", "engine,ctxproto,vllm"):
        with pytest.raises(ConfigError, match="--paths must name ctxproto"):
            parse_paths(bad)
