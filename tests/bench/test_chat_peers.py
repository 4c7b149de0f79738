"""The peers of ``ctxproto bench chat``: ratios, the history window, llama.cpp's server."""

from typing import Any

import pytest

from ctxproto.bench.chat import compare_paths, parse_paths, run_paths
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


def test_the_cache_alone_is_given_against_the_peer_on_the_same_engine_only():
    records = {
        "engine": rows([1.0, 1.0]),
        "llama_cpp": rows([3.0, 3.0]),
        "ctxproto": rows([0.5, 0.5]),
    }
    assert compare_paths(records)["cache_alone"] == {"ctxproto/engine": 1.0}  # nothing repeats


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


@pytest.mark.parametrize("command", ["chat", "suite"])
def test_no_speculate_reaches_the_engine_options_of_both_commands(command):
    from ctxproto.bench.chat import engine_options, engine_serving
    from ctxproto.cli.main import build_parser

    def options(*extra: str) -> dict[str, Any]:
        return engine_options(engine_serving(build_parser().parse_args(["bench", command, *extra])))

    assert options("--no-speculate")["speculate"] is False
    assert options()["speculate"] is True
    assert options("--quantize", "int8")["quantize"] == "int8"
    parsed = build_parser().parse_args(["bench", command, "--fixed-length"])
    assert engine_serving(parsed).fixed_length is True
    assert engine_serving(build_parser().parse_args(["bench", command])).fixed_length is False


def test_the_comparison_fits_80_columns_and_says_when_our_engine_did_not_speculate(capsys):
    from ctxproto.bench.chat import print_comparison

    records = {"engine": rows([1.0, 1.0]), "ctxproto_llama_cpp": rows([0.5, 0.5])}
    records["ctxproto"] = rows([0.5, 0.25])
    result = compare_paths(records)
    result["speculate_by_path"] = {"engine": False, "ctxproto": False}
    print_comparison(result)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "no speculation" in out
    assert "ms/token" in out
    result["speculate_by_path"] = {"engine": True, "ctxproto": True}
    print_comparison(result)
    assert "no speculation" not in capsys.readouterr().out


def test_a_peer_whose_server_dies_mid_run_is_named_with_why_and_the_others_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    """llama.cpp's server crashing at the third turn leaves its paths out, said why."""
    import ctxproto.bench.chat as chat

    stopped: list[str] = []

    class DeadServer:
        binary, threads = tmp_path / "llama-server", 2

        def exit_reason(self) -> str:
            return "exited: killed by signal SIGKILL"

        def stop(self) -> None:  # at once: a hung one must not take CPU from the rest
            stopped.append("now")

    def backend(path, stack, engines, servers, serving):
        if path in ("llama_cpp", "ctxproto_llama_cpp"):
            servers[path] = DeadServer()
        return path

    def turns(path, scripts, *args):
        for number, seconds in enumerate([1.0, 1.0, 1.0, 1.0], 1):
            if path == "llama_cpp" and number == 3:
                raise BackendError("cannot reach http://127.0.0.1:1/v1: connection refused")
            yield rows([seconds / (2 if path == "ctxproto" else 1)])[0]

    monkeypatch.setattr(chat, "_warm_up", lambda: None)
    monkeypatch.setattr(chat, "get_counter", lambda *args: None)
    monkeypatch.setattr(chat, "_backend", backend)
    monkeypatch.setattr(chat, "_turns", turns)
    script = SessionScript("s", tuple(ChatTurn(f"turn {i}", "chat") for i in range(4)))
    result = run_paths([script], 4, paths=("engine", "llama_cpp", "ctxproto"))
    reason = result["unavailable"]["llama_cpp"]
    assert reason.startswith("stopped after 2 turns: llama-server exited: killed by signal")
    assert "connection refused" in reason
    assert set(result["paths"]) == {"engine", "ctxproto"}
    assert result["ratios"] == {"ctxproto/engine": 2.0}
    assert result["llama_server_by_path"] == {}
    assert stopped == ["now"]


def test_why_a_peer_was_left_out_is_printed_as_said(capsys):
    from ctxproto.bench.chat import print_comparison

    result = compare_paths({"engine": rows([1.0]), "ctxproto": rows([0.5])})
    why = "llama-server not found; pip install 'ctxproto[bench]' [or build it]"
    result["unavailable"] = {"llama_cpp": why}
    print_comparison(result)
    out = " ".join(capsys.readouterr().out.split())
    assert f"llama_cpp left out: {why}" in out
