from pathlib import Path
from typing import Any

import pytest

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


@pytest.mark.parametrize(
    "where", ["folder", "under-a-file", "name-too-long", "its-temporary-name-too-long"]
)
def test_a_plot_path_that_cannot_be_written_is_refused_before_the_benchmark_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    """The plot is drawn after the whole run: a --plot naming a folder, or a file where
    its folder should be, ended minutes of benchmark in a traceback, the figures lost."""
    from ctxproto.bench import chat
    from ctxproto.cli.main import main

    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(chat, "run_chat_benchmark", run)
    (tmp_path / "notes.txt").write_text("x", "utf-8")
    plot = {
        "folder": tmp_path,
        "under-a-file": tmp_path / "notes.txt" / "plot.png",
        "name-too-long": tmp_path / ("x" * 300 + ".png"),  # is_dir() raised OSError
        # 249 characters: a file name the folder takes, the atomic write's not.
        "its-temporary-name-too-long": tmp_path / ("x" * 245 + ".png"),
    }[where]
    assert main(["bench", "chat", "--plot", str(plot)]) == 2
    err = capsys.readouterr().err
    assert "'--plot'" in err and "Traceback" not in err


def test_the_plot_is_written_as_png_at_exactly_the_path_given(tmp_path: Path) -> None:
    """Given a name without a suffix, the plot went to that name plus ".png"."""
    from ctxproto.bench.chat import plot_by_turns

    rows = [
        {
            "turn": turn,
            "effective_tps_ratio": 1.0 + turn / 10,
            "baseline_prompt_tokens": 100 * turn,
            "ctxproto_prompt_tokens": 60 * turn,
            "ctxproto_prefill_tokens": 20 * turn,
        }
        for turn in (1, 2, 3)
    ]
    plot_by_turns(rows, tmp_path / "by-turns")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-turns"]
    assert (tmp_path / "by-turns").read_bytes().startswith(b"\x89PNG")
