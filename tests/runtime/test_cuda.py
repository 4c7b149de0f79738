"""The CUDA path: skipped only when no CUDA device is present (CI has none)."""

import pytest
import torch

from ctxproto.runtime import Engine, GenerationParams
from tests.runtime.conftest import chat

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.models,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is absent"),
]

GREEDY = GenerationParams(max_new_tokens=12)
QUESTIONS = ["How long is the warranty?", "Which products does Acme sell?"]


def token_ids(engine: Engine, question: str) -> list[int]:
    handle = engine.submit(engine.encode_chat(chat(question)), GREEDY)
    handle.result()
    return handle.token_ids


def test_cuda_greedy_with_cache_equals_without():
    with (
        Engine(device="cuda", dtype="float32") as cached,
        Engine(device="cuda", dtype="float32", prefix_cache=False, max_batch_size=1) as plain,
    ):
        for question in QUESTIONS:
            assert token_ids(cached, question) == token_ids(plain, question)
        assert cached.stats().cached_tokens > 0


def test_cuda_bf16_generates_and_offloads_evicted_spans_to_host():
    token_bytes = 30 * 2 * 3 * 64 * 2  # SmolLM2-135M in bfloat16
    with Engine(
        device="cuda", dtype="bfloat16", cache_bytes=80 * token_bytes, offload_bytes=1 << 28
    ) as engine:
        assert engine.model.dtype == torch.bfloat16
        first = engine.generate(chat(QUESTIONS[0], system="Rule A."), GREEDY)
        engine.generate(chat(QUESTIONS[1], system="Rule B: be brief, always."), GREEDY)
        again = engine.generate(chat(QUESTIONS[0], system="Rule A."), GREEDY)
        stats = engine.stats()
    assert first.text and first.metrics.output_tokens > 0
    assert stats.offloads > 0
    assert stats.bytes_in_use <= 80 * token_bytes
    assert again.metrics.cached_tokens > 0
