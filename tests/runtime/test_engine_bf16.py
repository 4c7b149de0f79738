"""The engine with bfloat16 weights keeps the float engine's promises about the cache.

Only the linear layers' inputs and outputs are rounded, with no per-call scale, and
the LM head ranks with float32 logits; greedy output stays token for token the same
with the prefix cache on and off, batched or not, and speculative decoding emits
the tokens of one-token steps.
"""

from collections.abc import Iterator

import pytest
import torch

from ctxproto.errors import ConfigError
from ctxproto.runtime import Engine, GenerationParams
from tests.runtime.conftest import chat
from tests.runtime.test_engine import QUESTIONS, run
from tests.runtime.test_engine_speculation import COPYING, NOT_COPYING, answer

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def bf16_engine(lm) -> Iterator[Engine]:
    with Engine(quantize="bf16", speculate=False) as running:
        yield running


@pytest.fixture(scope="module")
def bf16_plain_engine(lm) -> Iterator[Engine]:
    with Engine(quantize="bf16", prefix_cache=False, max_batch_size=1, speculate=False) as running:
        yield running


def test_only_the_engines_copy_is_rounded(lm, bf16_engine):
    model = bf16_engine.model
    assert type(model.lm_head).__name__ == "Bf16Head"
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Bf16Linear"
    assert type(lm.lm_head) is torch.nn.Linear
    assert type(lm.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert model.model.embed_tokens.weight.dtype == torch.float32


def test_cached_prefixes_and_answers_give_the_plain_tokens(bf16_engine, bf16_plain_engine):
    first = chat(QUESTIONS[0])
    for messages in (first, chat(QUESTIONS[1]), first):  # split span, then a full hit
        assert run(bf16_engine, messages)[0] == run(bf16_plain_engine, messages)[0]
    _, answer_one = run(bf16_engine, first)
    second = [
        *first,
        {"role": "assistant", "content": answer_one.text},
        {"role": "user", "content": "And the M2?"},
    ]
    ids, follow_up = run(bf16_engine, second)
    # The previous answer's KV came from decode steps; the plain engine prefills it.
    assert follow_up.metrics.cached_tokens > len(bf16_engine.encode_chat(first))
    assert ids == run(bf16_plain_engine, second)[0]


def test_batched_rows_give_the_plain_tokens(bf16_engine, bf16_plain_engine):
    params = [GenerationParams(max_new_tokens=n) for n in (4, 12, 8, 12)]
    handles = [
        bf16_engine.submit(bf16_engine.encode_chat(chat(q)), p)
        for q, p in zip(QUESTIONS, params, strict=True)
    ]
    for question, p, handle in zip(QUESTIONS, params, handles, strict=True):
        handle.result()
        assert handle.token_ids == run(bf16_plain_engine, chat(question), p)[0]


def test_speculation_is_on_and_keeps_the_one_token_steps(bf16_plain_engine):
    with Engine(quantize="bf16") as speculating:
        assert speculating.speculate
        passes = tokens = 0
        for messages in COPYING + NOT_COPYING:
            ids, text, reason, forwards = answer(speculating, messages)
            assert (ids, text, reason) == answer(bf16_plain_engine, messages)[:3]
            passes, tokens = passes + forwards, tokens + len(ids)
    assert passes < tokens  # drafts were accepted: fewer forwards than tokens


def test_int8_turns_speculation_off_and_a_gpu_is_refused(lm):
    with Engine(quantize="int8_head") as engine:
        assert not engine.speculate
    with pytest.raises(ConfigError, match="CPU only"):
        Engine(device="cuda", quantize="bf16")
