import json

from ctxproto.cli.main import main


def test_eviction_bench_prints_every_scenario_and_the_round_robin_gain(capsys):
    assert main(["bench", "eviction", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {(r["scenario"], r["cap_tokens"]): r for r in result["rows"]}
    assert {scenario for scenario, _ in rows} == {
        "round_robin",
        "churn",
        "random_users",
        "one_offs",
    }
    # 16 histories of 720 tokens past the system prompt; 6,000 tokens hold about 8.
    gain = rows[("round_robin", 6000)]
    assert gain["computed_tokens"]["reuse"] < 0.6 * gain["computed_tokens"]["lru"]
    for row in result["rows"]:  # never much worse than LRU on any stream
        assert row["computed_tokens"]["reuse"] <= 1.05 * row["computed_tokens"]["lru"]
    assert "cpu" in result["machine"]
