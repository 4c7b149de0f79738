import json

from ctxproto.cli.main import main


def test_eviction_bench_prints_every_stream_and_the_round_robin_gain(capsys):
    assert main(["bench", "eviction", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {(r["scenario"], r["in_flight"], r["cap_tokens"]): r for r in result["rows"]}
    assert {scenario for scenario, _, _ in rows} == {
        "round_robin",
        "churn",
        "random_users",
        "one_offs",
    }
    # 16 histories of 720 tokens past the system prompt; 6,000 tokens hold about 8.
    for in_flight in (1, 4):  # one request at a time, and a batch of four
        computed = rows[("round_robin", in_flight, 6000)]["computed_tokens"]
        assert computed["reuse"] < 0.6 * computed["lru"]
    for row in result["rows"]:  # never much worse than LRU on any stream
        assert row["computed_tokens"]["reuse"] <= 1.05 * row["computed_tokens"]["lru"]
