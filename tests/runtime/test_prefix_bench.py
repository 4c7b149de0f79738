"""``ctxproto bench prefix`` end to end on a tiny workload: the keys and the equality check."""

import json

import pytest

from ctxproto.cli.main import main

pytestmark = [pytest.mark.models, pytest.mark.slow]

KEYS = {
    "ttft_cold_ms",
    "ttft_warm_ms",
    "warm_speedup",
    "greedy_match",
    "zero_hit_overhead",
    "throughput_ratio_vs_generate",
    "throughput_ratio_vs_generate_batch",
    "hit_rate",
    "device",
}


def test_prefix_bench_prints_the_issue_keys(lm, capsys):
    args = ["--prefix-tokens", "48", "--requests", "2", "--max-new-tokens", "2"]
    args += ["--distinct-prompts", "1", "--distinct-tokens", "16"]
    assert main(["bench", "prefix", "--json", *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result.keys() >= KEYS
    assert result["greedy_match"] is True
    assert result["generate_match"] is True
    assert result["device"] == "cpu"
    assert 0 < result["hit_rate"] < 1
    assert result["prefix_tokens"] >= 48
