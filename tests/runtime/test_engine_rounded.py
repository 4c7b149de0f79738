"""Engines with rounded weights that keep the float engine's promises about the cache.

``bf16`` (bfloat16 weights) and ``int8_weights`` (int8 weights) round the linear
layers' inputs to bfloat16 only, with no per-call scale; ``int8_head`` rounds the
LM head alone. Their heads rank with float32 logits, so greedy output stays token
for token the same with the prefix cache on and off, batched or not, and
speculative decoding (where the mode runs it: not ``bf16``) emits the tokens of
one-token steps.
"""

from collections.abc import Iterator

import pytest
import torch

from ctxproto.runtime import Engine, GenerationParams
from ctxproto.runtime.engine import resolve_quantize
from tests.conftest import cpu_runs_kernels
from tests.runtime.conftest import chat
from tests.runtime.test_engine import QUESTIONS, run
from tests.runtime.test_engine_speculation import COPYING, NOT_COPYING, answer

pytestmark = pytest.mark.models


LAYERS = {
    "none": ("PackedLinear", "PackedLinear"),
    "bf16": ("Bf16Head", "Bf16Linear"),
    "int8_weights": ("Int8WeightLinear", "Int8WeightLinear"),
    "int8_head": ("Int8Head", "PackedLinear"),
}
"""Each mode's LM head and body layer classes. The float modes multiply by the GGUF
file's own blocks (``packed_linear``)."""


@pytest.fixture(scope="module", params=sorted(LAYERS))
def mode(request) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def rounded_engine(lm, mode) -> Iterator[Engine]:
    with Engine(quantize=mode, speculate=False) as running:
        yield running


@pytest.fixture(scope="module")
def rounded_plain_engine(lm, mode) -> Iterator[Engine]:
    with Engine(quantize=mode, prefix_cache=False, max_batch_size=1, speculate=False) as running:
        yield running


def test_only_the_engines_copy_is_rounded(lm, rounded_engine, mode):
    model = rounded_engine.model
    head, body = LAYERS[mode]
    assert type(model.lm_head).__name__ == head
    layer = type(model.model.layers[0].mlp.up_proj).__name__
    assert layer == body if cpu_runs_kernels() else layer in ("Linear", "SplitLinear")
    assert type(lm.lm_head) is torch.nn.Linear
    assert type(lm.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert model.model.embed_tokens.weight.dtype == torch.float32


def test_cached_prefixes_and_answers_give_the_plain_tokens(rounded_engine, rounded_plain_engine):
    first = chat(QUESTIONS[0])
    for messages in (first, chat(QUESTIONS[1]), first):  # split span, then a full hit
        assert run(rounded_engine, messages)[0] == run(rounded_plain_engine, messages)[0]
    _, answer_one = run(rounded_engine, first)
    second = [
        *first,
        {"role": "assistant", "content": answer_one.text},
        {"role": "user", "content": "And the M2?"},
    ]
    ids, follow_up = run(rounded_engine, second)
    # The previous answer's KV came from decode steps; the plain engine prefills it.
    assert follow_up.metrics.cached_tokens > len(rounded_engine.encode_chat(first))
    assert ids == run(rounded_plain_engine, second)[0]


def test_batched_rows_give_the_plain_tokens(rounded_engine, rounded_plain_engine):
    params = [GenerationParams(max_new_tokens=n) for n in (4, 12, 8, 12)]
    handles = [
        rounded_engine.submit(rounded_engine.encode_chat(chat(q)), p)
        for q, p in zip(QUESTIONS, params, strict=True)
    ]
    for question, p, handle in zip(QUESTIONS, params, handles, strict=True):
        handle.result()
        assert handle.token_ids == run(rounded_plain_engine, chat(question), p)[0]


def test_speculation_is_on_and_keeps_the_one_token_steps(rounded_plain_engine, mode):
    if mode == "bf16":
        # A verify multiplies several rows, which oneDNN may sum in another order than
        # one row: an Intel Xeon with AVX512-BF16 emitted other tokens than one-token
        # steps. So bf16 does not speculate.
        with Engine(quantize=mode) as bf16:
            assert not bf16.speculate
        return
    with Engine(quantize=mode) as speculating:
        assert speculating.speculate
        passes = tokens = 0
        for messages in COPYING + NOT_COPYING:
            ids, text, reason, forwards = answer(speculating, messages)
            assert (ids, text, reason) == answer(rounded_plain_engine, messages)[:3]
            passes, tokens = passes + forwards, tokens + len(ids)
    assert passes < tokens  # drafts were accepted: fewer forwards than tokens


def test_the_default_is_float32_and_the_int8_head_keeps_its_answers(lm):
    assert resolve_quantize("auto") == "none"
    assert resolve_quantize("bf16") == "bf16"
    params = GenerationParams(max_new_tokens=24)
    with Engine() as default, Engine(quantize="int8_head") as int8_head:
        assert default.quantize == "none"
        if cpu_runs_kernels():
            assert type(default.model.lm_head).__name__ == LAYERS["none"][0]
        for messages in [chat(q) for q in QUESTIONS] + COPYING:
            assert run(int8_head, messages, params)[0] == run(default, messages, params)[0]
