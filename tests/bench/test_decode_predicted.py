"""Predicted outputs in ``ctxproto bench decode``: edits and reworded questions."""

import pytest

from ctxproto.bench.decode_predicted import predicted_figures

pytestmark = [pytest.mark.models, pytest.mark.slow]


def test_edits_and_reworded_questions_keep_their_tokens_with_a_prediction(lm):
    figures = predicted_figures(1, 12, peer=False)
    assert figures["llama_server"] == "not run (--no-peer)"
    for kind in ("edit", "reworded", "repeated"):
        part = figures[kind]
        assert part["same_tokens"] is True
        assert set(part["decode_tokens_per_s"]) == {"engine", "engine_predicted"}
        assert all(rate > 0 for rate in part["decode_tokens_per_s"].values())
        assert "predicted_vs_llama_server" not in part
        assert part["predicted_vs_engine"] > 0
    # An edit repeats much of the text it was sent.
    assert figures["edit"]["prediction_repeated"] > 0
    # An answer predicted by itself is decoded in a few forwards.
    repeated = figures["repeated"]
    assert repeated["prediction_repeated"] > 0.9
    assert repeated["tokens_per_forward"]["engine_predicted"] >= 3
