"""The evaluation loop: baseline next to pipelines, failures counted, names unique."""

from __future__ import annotations

from typing import Any

import pytest

from ctxproto.budget import Budget
from ctxproto.errors import ConfigError
from ctxproto.eval import BASELINE, DatasetOptions, evaluate, load_dataset
from ctxproto.eval.aggregate import aggregate
from ctxproto.eval.runner import Evaluator, unique_names
from ctxproto.pipeline import Pipeline
from ctxproto.stages.recency_window import RecencyWindow


def test_a_failing_pipeline_is_counted_not_fatal() -> None:
    dataset = load_dataset("needle", DatasetOptions(context_lengths=[600], depths=[0, 100]))
    too_small = Pipeline([], Budget(max_prompt_tokens=10), name="tiny")
    roomy = Pipeline([RecencyWindow(max_turns=2)], Budget(max_prompt_tokens=5000), name="roomy")
    report = evaluate([too_small, roomy], dataset)
    summary = report.summary()
    tiny = summary["pipelines"]["tiny"]
    assert tiny["items"] == 2 and tiny["errors"] == 2 and tiny["answer_retention"] == 0.0
    assert tiny["compression_ratio"] is None and tiny["p50_ms"] is None
    assert all("BudgetError" in row["error"] for row in report.rows_of("tiny"))
    # A budget larger than the item changes nothing: same tokens as the baseline.
    assert summary["pipelines"]["roomy"]["prompt_tokens"] == summary["baseline"]["prompt_tokens"]
    assert summary["pipelines"]["roomy"]["answer_retention"] == 1.0
    assert report.systems == [BASELINE, "tiny", "roomy"]


def test_a_pipeline_that_fails_an_item_scores_zero_on_it_with_the_reader_too() -> None:
    from ctxproto.eval.readers import Reader
    from ctxproto.runtime import ScriptedBackend

    dataset = load_dataset("needle", DatasetOptions(context_lengths=[600], depths=[0, 100]))
    answers = [item.answers[0] for item in dataset.items()]
    reader = Reader(ScriptedBackend(lambda _messages: " ".join(answers)), "scripted")
    too_small = Pipeline([], Budget(max_prompt_tokens=10), name="tiny")
    summary = evaluate([too_small], dataset, reader=reader).summary()
    assert summary["baseline"]["reader_em"] == 1.0
    tiny = summary["pipelines"]["tiny"]
    assert tiny["errors"] == 2 and tiny["reader_em"] == 0.0 and tiny["reader_items"] == 2


@pytest.mark.models
def test_a_failed_item_counts_under_the_log_prob_only_where_the_baseline_was_scored(
    lm: Any,
) -> None:
    """The 1200-token item is longer than the scorer takes: no system is scored on it.
    A pipeline failing it counted it as a log-prob loss all the same, so its share was
    over other items than the baseline's (2 scored where the baseline had 1)."""
    from ctxproto.eval.logprob import AnswerLogprobScorer

    dataset = load_dataset("needle", DatasetOptions(context_lengths=[300, 1200], depths=[50]))
    too_small = Pipeline([], Budget(max_prompt_tokens=10), name="tiny")
    scorer = AnswerLogprobScorer(max_tokens=600)
    summary = evaluate([too_small], dataset, scorer=scorer).summary()
    assert summary["baseline"]["logprob_items"] == 1
    tiny = summary["pipelines"]["tiny"]
    assert tiny["errors"] == 2 and tiny["logprob_items"] == 1
    assert tiny["logprob_retention"] == 0.0


@pytest.mark.models
def test_a_lone_surrogate_in_an_item_is_scored_as_its_replacement(lm: Any) -> None:
    """Half an escaped pair in a JSONL item's messages or answer: the scorer's
    tokenizer refused the text with a bare TypeError."""
    from ctxproto.eval.logprob import AnswerLogprobScorer

    scorer = AnswerLogprobScorer(max_tokens=600)
    broken = scorer.score([{"role": "user", "content": "Where is \ud83d it?"}], "Here \udc80.")
    replaced = scorer.score([{"role": "user", "content": "Where is \ufffd it?"}], "Here \ufffd.")
    assert broken is not None and broken == pytest.approx(replaced)


def test_the_baseline_places_documents_where_the_pipeline_does() -> None:
    dataset = load_dataset("needle", DatasetOptions(context_lengths=[600], depths=[50]))
    unchanged = Pipeline([], Budget(max_prompt_tokens=5000), documents_position="query")
    report = evaluate([unchanged], dataset)
    assert report.summary()["pipelines"]["pipeline"]["compression_ratio"] == 1.0
    baseline, pipeline = report.rows_of(BASELINE)[0], report.rows_of("pipeline")[0]
    assert baseline["prompt_tokens"] == pipeline["prompt_tokens"]


def test_names_are_unique_and_never_the_baseline() -> None:
    pipelines = [Pipeline([], name="p"), Pipeline([], name="p"), Pipeline([], name=BASELINE)]
    assert unique_names(pipelines) == ["p", "p-2", "baseline-pipeline"]


def test_aggregate_known_rows() -> None:
    rows: list[dict[str, Any]] = [
        {"original_tokens": 100, "prompt_tokens": 25, "ms": 2.0, "answer_retained": 1.0},
        {"original_tokens": 300, "prompt_tokens": 75, "ms": 6.0, "answer_retained": 0.0},
        {"error": "BudgetError: too big", "answer_retained": 0.0},
    ]
    values = aggregate(rows)
    assert values["compression_ratio"] == 4.0
    assert values["answer_retention"] == 1 / 3
    assert values["errors"] == 1 and values["items"] == 3
    assert values["p50_ms"] == 4.0 and values["tokens_per_s"] == 400 / 0.008
    assert values["logprob_retention"] is None and values["reader_em"] is None


def test_no_pipeline_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least one pipeline"):
        Evaluator([])


def test_a_dataset_without_items_is_a_dataset_error_not_an_empty_report() -> None:
    from collections.abc import Iterator

    from ctxproto.errors import DatasetError
    from ctxproto.eval import Dataset, EvalItem

    class Empty(Dataset):
        name = "empty"

        def items(self, limit: int | None = None) -> Iterator[EvalItem]:
            return iter(())

    with pytest.raises(DatasetError, match="'empty' has no item"):
        evaluate([Pipeline([], name="p")], Empty())


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_under_one_is_a_config_error_not_a_shorter_run(tmp_path: Any, limit: int) -> None:
    """limit=-1 reached the JSONL dataset as a slice end: its last item was left out."""
    import json

    item = {"question": "Who?", "answers": ["Ann"], "documents": [{"id": "d", "text": "Ann."}]}
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", **item}) + "\n" for i in range(3)))
    with pytest.raises(ConfigError, match="at least 1"):
        evaluate([Pipeline([], name="p")], load_dataset(str(path)), limit=limit)
