"""Readers over the runtime's backends: the bundled engine answers from each prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctxproto.errors import ConfigError
from ctxproto.eval import evaluate, load_dataset, reader_from_spec
from ctxproto.pipeline import Pipeline


def test_reader_specs() -> None:
    assert reader_from_spec("none") is None
    with pytest.raises(ConfigError, match="unknown reader"):
        reader_from_spec("openai:")
    with pytest.raises(ConfigError, match="http"):
        reader_from_spec("openai:ftp://example")


@pytest.mark.models
@pytest.mark.slow
def test_bundled_reader_answers_with_and_without_compression(tmp_path: Path, lm: object) -> None:
    item = {
        "id": "locker",
        "question": "What is Dana's locker number? Reply with the number only.",
        "answers": ["4417302"],
        "documents": [{"id": "memo", "text": "Dana's locker number is 4417302."}],
    }
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(item) + "\n", "utf-8")
    config = {
        "name": "no-documents",
        "budget": {"max_prompt_tokens": 500, "section_caps": {"documents": 0}},
    }
    drop = Pipeline.from_dict(config)
    reader = reader_from_spec("bundled")
    assert reader is not None
    try:
        report = evaluate([drop], load_dataset(str(path)), reader=reader)
    finally:
        reader.close()
    baseline, dropped = report.rows_of("baseline")[0], report.rows_of("no-documents")[0]
    for row in (baseline, dropped):
        assert isinstance(row["reader_answer"], str) and row["reader_answer"]
        assert 0.0 <= row["reader_f1"] <= 1.0
    # A random 7-digit number cannot be answered once its document is gone.
    assert dropped["reader_em"] == 0.0
    summary = report.summary()
    assert (
        summary["baseline"]["reader_items"]
        == summary["pipelines"]["no-documents"]["reader_items"]
        == 1
    )
    assert summary["settings"]["reader"] == "bundled"
