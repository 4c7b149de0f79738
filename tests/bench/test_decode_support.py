"""Support answers of ``ctxproto bench decode``: speculation, rounded weights, llama.cpp."""

import pytest

from ctxproto.bench.decode_support import OTHER_MODES, support_figures
from ctxproto.bench.llama_server import llama_server_binaries

pytestmark = [pytest.mark.models, pytest.mark.slow]


ENGINES = {"engine", "engine_one_token"} | {f"engine_{mode}" for mode in OTHER_MODES}


def test_reports_both_engines_with_the_same_tokens_and_the_peer_beside_them(lm):
    figures = support_figures(1, 6)
    assert figures["answers"] == 1
    assert figures["prompt_tokens"] > 3000  # system prompt and the whole knowledge base
    assert figures["same_tokens"] is True
    assert figures["tokens_per_forward"] >= 1.0
    # The peer runs when a llama-server binary here can run on this CPU (a prebuilt
    # one may die with SIGILL); otherwise the report names why, binary by binary.
    binaries = llama_server_binaries()
    ran = figures["llama_server"].startswith("ran")
    peers = {"llama_server"} if ran else set()
    if not ran:
        assert figures["llama_server"].startswith("not run: ")
        assert all(str(binary) in figures["llama_server"] for binary in binaries)
        assert binaries or "make bench-peers" in figures["llama_server"]
    for kind in ("decode", "prefill"):
        rates = figures[f"{kind}_tokens_per_s"]
        assert set(rates) == ENGINES | peers
        assert all(rate > 0 for rate in rates.values())
        assert (f"{kind}_vs_llama_server" in figures) == bool(peers)
        for mode in OTHER_MODES:
            assert (f"{mode}_{kind}_vs_llama_server" in figures) == bool(peers)
    for mode in OTHER_MODES:
        assert 0.0 <= figures[f"{mode}_identical_answers"] <= 1.0


def test_without_the_peer_reports_ours_alone(lm, monkeypatch):
    # The whole knowledge base is the test above's; here a short question does, which
    # spares five cold 3.2k-token prefills.
    from ctxproto.bench import decode_support

    def short_prompts(engine, count):
        return [engine.encode_chat([{"role": "user", "content": "Say hi."}])] * count

    monkeypatch.setattr(decode_support, "support_prompts", short_prompts)
    figures = support_figures(1, 2, peer=False)
    assert figures["prompt_tokens"] < 100
    assert figures["llama_server"] == "not run (--no-peer)"
    assert set(figures["decode_tokens_per_s"]) == ENGINES
    assert "decode_vs_llama_server" not in figures
