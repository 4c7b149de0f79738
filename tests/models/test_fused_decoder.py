"""Decoder layers whose work around the attention runs in two C++ calls: the same bits
as transformers' layers over the packed products, for a decode step, a verifying
forward and a short prefill; the wrapped layer for longer inputs; nothing fused in a
model whose products are not packed."""

from typing import Any

import pytest
import torch

from ctxproto.models.fused_decoder import fuse_decoder_layers
from ctxproto.models.packed_linear import PACKED_ROWS
from ctxproto.runtime.engine import engine_model
from ctxproto.runtime.kv_layout import new_cache
from tests.conftest import needs_avx512


@pytest.fixture(scope="module")
def fused(lm) -> Any:
    return engine_model(lm, "none")


@pytest.fixture(scope="module")
def unfused(lm) -> Any:
    model = engine_model(lm, "none")
    layers = model.model.layers
    for index, layer in enumerate(layers):
        layers[index] = getattr(layer, "layer", layer)
    return model


def forwards(model: Any, ids: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
    """The logits of a prefill longer than the fused rows, three decode steps, a
    5-token forward under the causal mask and a 40-token one, and the cache after."""
    cache = new_cache()
    logits = []
    with torch.inference_mode():
        out = model(input_ids=ids[:, : PACKED_ROWS + 36], cache=cache, use_cache=True)
        logits.append(out.logits)
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(3):
            out = model(input_ids=token, cache=cache, use_cache=True)
            logits.append(out.logits)
            token = out.logits[:, -1:].argmax(-1)
        for length in (5, 40):
            out = model(input_ids=ids[:, :length], cache=cache, use_cache=True)
            logits.append(out.logits)
    return logits, cache


@needs_avx512
def test_every_layer_of_the_bundled_model_is_fused(fused, lm):
    assert {type(layer).__name__ for layer in fused.model.layers} == {"FusedDecoderLayer"}
    assert {type(layer).__name__ for layer in lm.model.layers} == {"LlamaDecoderLayer"}
    # Code written for a Llama layer still finds its modules.
    assert fused.model.layers[0].mlp.down_proj.format == "q4_1"


@needs_avx512
def test_fused_layers_compute_the_same_bits(fused, unfused):
    ids = torch.randint(100, 40000, (1, 200), generator=torch.Generator().manual_seed(3))
    got, got_cache = forwards(fused, ids)
    want, want_cache = forwards(unfused, ids)
    for fused_logits, plain_logits in zip(got, want, strict=True):
        assert torch.equal(fused_logits, plain_logits)
    for mine, theirs in zip(got_cache.layers, want_cache.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)


@needs_avx512
def test_only_inputs_the_calls_take_run_fused(fused, monkeypatch):
    wrapped = fused.model.layers[0].layer
    calls: list[int] = []
    original = wrapped.forward

    def counting(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(hidden_states.shape[1])
        return original(hidden_states, *args, **kwargs)

    monkeypatch.setattr(wrapped, "forward", counting)
    cache = new_cache()
    with torch.inference_mode():
        for length in (PACKED_ROWS + 1, 1, PACKED_ROWS):
            fused(input_ids=torch.ones(1, length, dtype=torch.long), cache=cache)
    assert calls == [PACKED_ROWS + 1]  # the decode step and the 64 rows ran fused


def test_a_model_without_packed_products_is_left_alone():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = transformers.LlamaForCausalLM(config)
    assert fuse_decoder_layers(model) == 0
    assert {type(layer).__name__ for layer in model.model.layers} == {"LlamaDecoderLayer"}
    assert fuse_decoder_layers(torch.nn.Linear(4, 4)) == 0


@needs_avx512
def test_a_batch_of_rows_computes_the_same_bits(fused, unfused):
    """Two sequences side by side (a batched decode), the shorter one left-padded."""
    ids = torch.randint(100, 40000, (2, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0

    def run(model: Any) -> list[torch.Tensor]:
        cache = new_cache()
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)
            step = out.logits[:, -1:].argmax(-1)
            grown = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            after = model(input_ids=step, attention_mask=grown, cache=cache, use_cache=True)
        return [out.logits, after.logits]

    for fused_logits, plain_logits in zip(run(fused), run(unfused), strict=True):
        assert torch.equal(fused_logits, plain_logits)
