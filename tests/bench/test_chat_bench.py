from typing import Any

from ctxproto.bench.chat import summarize
from ctxproto.bench.chat_paths import TurnRecord
from ctxproto.bench.chat_workload import build_workload


def record(turn: int, prompt: int, prefill: int, seconds: float, **extra: Any) -> TurnRecord:
    return TurnRecord(
        session="s",
        turn=turn,
        kind=extra.pop("kind", "chat"),
        prompt_tokens=prompt,
        prefill_tokens=prefill,
        output_tokens=10,
        ttft_ms=seconds * 500,
        seconds=seconds,
        **extra,
    )


def test_effective_tps_credits_both_paths_with_the_baseline_tokens():
    baseline = [record(1, 1000, 1000, 4.0), record(2, 1100, 1100, 4.0, fact_in_prompt=True)]
    ours = [
        record(1, 600, 600, 2.0),
        record(2, 0, 0, 0.5, semantic_hit=True, fact_in_prompt=True),
    ]
    result = summarize(baseline, ours)
    assert result["logical_tokens"] == 2120
    assert result["effective_tps_baseline"] == round(2120 / 8.0, 2)
    assert result["effective_tps_ctxproto"] == round(2120 / 2.5, 2)
    assert result["effective_tps_ratio"] == round(8.0 / 2.5, 3)
    assert result["prefill_tokens_ctxproto"] == 600
    assert result["semantic_cache_hit_rate"] == 0.5
    assert result["fact_retention"] == 1.0
    assert [row["effective_tps_ratio"] for row in result["by_turns"]] == [2.0, 3.2]


def test_prefix_hit_rate_counts_reused_prompt_tokens():
    baseline = [record(1, 1000, 1000, 1.0), record(2, 1000, 1000, 1.0)]
    ours = [record(1, 1000, 1000, 1.0), record(2, 1000, 100, 0.2)]
    assert summarize(baseline, ours)["prefix_hit_rate"] == round(1 - 1100 / 2000, 4)


def test_workload_plants_facts_repeats_questions_and_is_deterministic(counter):
    scripts = build_workload(2, 30, counter, seed=3)
    assert scripts == build_workload(2, 30, counter, seed=3)
    for script in scripts:
        kinds = [t.kind for t in script.turns]
        assert len(kinds) == 30
        assert kinds[:2] == ["fact", "fact"]
        assert kinds[-2:] == ["ask", "ask"]
        assert "kb_repeat" in kinds and kinds.count("chat") > 10
        for fact in script.facts:
            assert any(fact.answer in t.text for t in script.turns[:2])
    assert scripts[0].facts != scripts[1].facts
