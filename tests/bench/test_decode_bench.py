"""``ctxproto bench decode`` runs every variant and checks they decode the same tokens."""

import pytest

from ctxproto.bench.decode import run

pytestmark = pytest.mark.models


def test_decode_bench_reports_every_variant_with_the_same_tokens(lm):
    figures = run(context=24, steps=3, rounds=1, rows=2)
    assert set(figures["step_ms"]) == {"transformers", "reserved_kv", "split_cores", "engine"}
    assert all(ms > 0 for ms in figures["step_ms"].values())
    assert figures["speedup_vs_transformers"]["transformers"] == 1.0
    assert figures["same_tokens"] is True


def test_decode_bench_refuses_zero_steps():
    from ctxproto.errors import ConfigError

    with pytest.raises(ConfigError, match="--steps"):
        run(context=8, steps=0, rounds=1)
