"""``ctxproto bench decode`` runs every variant and checks they decode the same tokens."""

import pytest

from ctxproto.bench.decode import run

pytestmark = pytest.mark.models


def test_decode_bench_reports_every_variant_with_the_same_tokens(lm):
    figures = run(context=24, steps=3, rounds=1, rows=2, answers=2)
    floats = {"transformers", "reserved_kv", "split_cores", "engine"}
    rounded = {"engine_int8_head", "engine_int8", "engine_int8_weights", "engine_bf16"}
    assert set(figures["step_ms"]) == floats | rounded
    assert set(figures["prefill_tokens_per_s"]) == floats | rounded
    assert all(ms > 0 for ms in figures["step_ms"].values())
    assert all(rate > 0 for rate in figures["prefill_tokens_per_s"].values())
    assert figures["speedup_vs_transformers"]["transformers"] == 1.0
    assert figures["same_tokens"] is True
    assert set(figures["quality"]) == rounded
    for quality in figures["quality"].values():
        assert quality["answers"] == 2
        assert 0.5 < quality["token_agreement"] <= 1.0
        assert 0.0 <= quality["identical_answers"] <= 1.0


def test_decode_bench_refuses_zero_steps():
    from ctxproto.errors import ConfigError

    with pytest.raises(ConfigError, match="--steps"):
        run(context=8, steps=0, rounds=1)
