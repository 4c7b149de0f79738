"""The engine with int8 inputs and weights: what it keeps of the cache's promises.

``int8`` rounds every layer's inputs with a per-token scale, so a last-bit
difference between a full and a cached prefill can cross a rounding step: it must
reuse the cache and start its answers the same. (``int8_head`` keeps them all:
``test_engine_rounded.py``.)
"""

import pytest

from ctxproto.errors import ConfigError
from ctxproto.runtime import Engine
from tests.runtime.conftest import chat
from tests.runtime.test_engine import QUESTIONS, run

pytestmark = pytest.mark.models


def test_int8_reuses_the_cache_and_starts_answers_like_the_plain_engine(lm):
    with (
        Engine(quantize="int8") as engine,
        Engine(quantize="int8", prefix_cache=False, max_batch_size=1) as plain,
    ):
        assert type(engine.model.model.layers[0].mlp.up_proj).__name__ == "Int8Linear"
        for question in QUESTIONS[:2]:
            ids, completion = run(engine, chat(question))
            assert ids[:4] == run(plain, chat(question))[0][:4]
        assert completion.metrics.cached_tokens > 0


def test_an_unknown_mode_or_a_gpu_is_refused(lm):
    with pytest.raises(ConfigError) as unknown:
        Engine(quantize="int4")
    assert unknown.value.key == "quantize"
    with pytest.raises(ConfigError, match="CPU only"):
        Engine(device="cuda", quantize="int8")
