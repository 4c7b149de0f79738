"""``ctxproto bench proxy`` runs end to end on a tiny workload and reports its figures."""

from __future__ import annotations

import pytest

from ctxproto.bench.proxy import run


@pytest.mark.models  # the semantic cache's embedder
def test_proxy_bench_reports_overhead_and_hits():
    result = run(requests=6, clients=2, seconds=0.5, chatbot=False)
    overhead = result["overhead_recency_window"]
    assert overhead["proxy_p50_ms"] > 0 and overhead["direct_p50_ms"] > 0
    assert result["cache_hits"]["answered_per_s"] > 0
    assert result["cache_hits"]["hit_share"] == 1.0


@pytest.mark.models
@pytest.mark.slow
def test_chat_workload_through_the_proxy_reports_ratio_and_retention():
    from ctxproto.bench.proxy_chat import run_chat_through_proxy

    result = run_chat_through_proxy(turns=6, sessions=1, max_new_tokens=2)
    assert result["logical_tokens"] > 0 and result["effective_tps_ratio"] > 0
    assert result["fact_retention"] == 1.0  # the chatbot pipeline keeps stated facts


def test_load_clients_that_cannot_connect_are_a_backend_error():
    import socket

    from ctxproto.bench.proxy_load import post_concurrently
    from ctxproto.errors import BackendError

    with socket.socket() as probe:  # a port nobody listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BackendError, match="load clients failed"):
        post_concurrently(f"http://127.0.0.1:{port}/v1/chat/completions", {}, 1, 0.2)
