"""The engine with int8 weights keeps every promise the float engine makes about the cache."""

from collections.abc import Iterator

import pytest
import torch

from ctxproto.errors import ConfigError
from ctxproto.runtime import Engine, GenerationParams
from tests.runtime.conftest import chat
from tests.runtime.test_engine import QUESTIONS, run

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def int8_engine(lm) -> Iterator[Engine]:
    with Engine(quantize="int8") as running:
        yield running


@pytest.fixture(scope="module")
def int8_plain_engine(lm) -> Iterator[Engine]:
    with Engine(quantize="int8", prefix_cache=False, max_batch_size=1) as running:
        yield running


def test_only_the_engines_copy_is_quantised(lm, int8_engine):
    model = int8_engine.model
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert type(lm.lm_head) is torch.nn.Linear
    # The embedding lookup keeps the float table the head was quantised from.
    assert model.model.embed_tokens.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()


def test_cached_prefixes_and_answers_give_the_plain_greedy_tokens(int8_engine, int8_plain_engine):
    first = chat(QUESTIONS[0])
    for messages in (first, chat(QUESTIONS[1]), first):  # split span, then a full hit
        assert run(int8_engine, messages)[0] == run(int8_plain_engine, messages)[0]
    _, answer = run(int8_engine, first)
    second = [
        *first,
        {"role": "assistant", "content": answer.text},
        {"role": "user", "content": "And the M2?"},
    ]
    ids, follow_up = run(int8_engine, second)
    # The previous answer's KV came from decode steps; the plain engine prefills it.
    assert follow_up.metrics.cached_tokens > len(int8_engine.encode_chat(first))
    assert ids == run(int8_plain_engine, second)[0]


def test_batched_rows_give_the_plain_greedy_tokens(int8_engine, int8_plain_engine):
    params = [GenerationParams(max_new_tokens=n) for n in (4, 12, 8, 12)]
    handles = [
        int8_engine.submit(int8_engine.encode_chat(chat(q)), p)
        for q, p in zip(QUESTIONS, params, strict=True)
    ]
    for question, p, handle in zip(QUESTIONS, params, handles, strict=True):
        handle.result()
        assert handle.token_ids == run(int8_plain_engine, chat(question), p)[0]


def test_an_unknown_mode_or_a_gpu_is_refused(lm):
    with pytest.raises(ConfigError) as unknown:
        Engine(quantize="int4")
    assert unknown.value.key == "quantize"
    with pytest.raises(ConfigError, match="CPU only"):
        Engine(device="cuda", quantize="int8")
