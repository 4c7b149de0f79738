"""The engine with int8 weights: what it keeps of the float engine's promises about the cache.

``int8_head`` rescores its top candidates in float, so greedy output must stay token
for token the same with the cache on and off, batched or not. ``int8`` rounds every
layer's inputs, so a last-bit difference between a full and a cached prefill can
cross a rounding step: it must reuse the cache and start its answers the same.
"""

from collections.abc import Iterator

import pytest
import torch

from ctxproto.errors import ConfigError
from ctxproto.runtime import Engine, GenerationParams
from tests.runtime.conftest import chat
from tests.runtime.test_engine import QUESTIONS, run

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def head_engine(lm) -> Iterator[Engine]:
    with Engine(quantize="int8_head") as running:
        yield running


@pytest.fixture(scope="module")
def head_plain_engine(lm) -> Iterator[Engine]:
    with Engine(quantize="int8_head", prefix_cache=False, max_batch_size=1) as running:
        yield running


def test_only_the_engines_copy_is_quantised(lm, head_engine):
    model = head_engine.model
    assert type(model.lm_head).__name__ == "Int8Head"
    assert type(model.model.layers[0].mlp.up_proj).__name__ != "Int8Linear"
    assert type(lm.lm_head) is torch.nn.Linear
    # The embedding lookup keeps the float table the head was quantised from.
    assert model.model.embed_tokens.weight.dtype == torch.float32


def test_int8_head_cached_prefixes_and_answers_give_the_plain_tokens(
    head_engine, head_plain_engine
):
    first = chat(QUESTIONS[0])
    for messages in (first, chat(QUESTIONS[1]), first):  # split span, then a full hit
        assert run(head_engine, messages)[0] == run(head_plain_engine, messages)[0]
    _, answer = run(head_engine, first)
    second = [
        *first,
        {"role": "assistant", "content": answer.text},
        {"role": "user", "content": "And the M2?"},
    ]
    ids, follow_up = run(head_engine, second)
    # The previous answer's KV came from decode steps; the plain engine prefills it.
    assert follow_up.metrics.cached_tokens > len(head_engine.encode_chat(first))
    assert ids == run(head_plain_engine, second)[0]


def test_int8_head_batched_rows_give_the_plain_tokens(head_engine, head_plain_engine):
    params = [GenerationParams(max_new_tokens=n) for n in (4, 12, 8, 12)]
    handles = [
        head_engine.submit(head_engine.encode_chat(chat(q)), p)
        for q, p in zip(QUESTIONS, params, strict=True)
    ]
    for question, p, handle in zip(QUESTIONS, params, handles, strict=True):
        handle.result()
        assert handle.token_ids == run(head_plain_engine, chat(question), p)[0]


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
