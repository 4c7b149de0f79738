"""``ctxproto bench rag-retention``: the RAG workload's retrieval alone, on the real index."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ctxproto.bench.machine import describe_machine
from ctxproto.cli.main import main


@pytest.mark.models
def test_every_ask_of_a_small_workload_keeps_its_answer_and_the_peers_chunks(
    capsys: Any,
) -> None:
    assert main(["bench", "rag-retention", "--sessions", "1", "--turns", "4", "--essays", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["asks"] == 4
    assert result["lexical_weight"] == 0.5
    assert result["retrieved"] == result["placed"] == result["same_chunks"] == 1.0
    assert result["misses"] == []
    assert result["machine"] == describe_machine()  # as every benchmark's figures
    # the relevance filter keeps about 30% of what the peers get
    assert 0.2 < result["placed_tokens_per_ask"] / result["retrieved_tokens_per_ask"] < 0.4


def test_a_lexical_weight_above_one_is_refused_before_any_embedding(capsys: Any) -> None:
    assert main(["bench", "rag-retention", "--lexical-weight", "2"]) == 2
    assert "lexical_weight" in capsys.readouterr().err
