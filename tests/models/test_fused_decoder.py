"""Decoder layers whose work around the attention runs in two C++ calls: the same bits
as transformers' layers over the packed products, for a decode step, a verifying
forward and a short prefill; the wrapped layer for longer inputs; nothing fused in a
model whose products are not packed."""

from typing import Any

import pytest
import torch

from ctxproto.models.fused_decoder import fuse_decoder_layers
from ctxproto.models.packed_linear import pack_linear_layers, packed_rows
from ctxproto.runtime.kv_layout import new_cache
from tests.conftest import needs_kernel_cpu, record_unfused_rows


def forwards(model: Any, ids: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
    """The logits of a prefill longer than the fused rows, three decode steps, a
    5-token forward under the causal mask and a 40-token one, and the cache after."""
    cache = new_cache()
    logits = []
    with torch.inference_mode():
        out = model(input_ids=ids[:, : packed_rows() + 36], cache=cache, use_cache=True)
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


@needs_kernel_cpu
def test_every_layer_of_the_bundled_model_is_fused(fused, lm):
    assert {type(layer).__name__ for layer in fused.model.layers} == {"FusedDecoderLayer"}
    assert {type(layer).__name__ for layer in lm.model.layers} == {"LlamaDecoderLayer"}
    # Code written for a Llama layer still finds its modules.
    assert fused.model.layers[0].mlp.down_proj.format == "q4_1"


@needs_kernel_cpu
def test_fused_layers_compute_the_same_bits(fused, unfused):
    ids = torch.randint(100, 40000, (1, 200), generator=torch.Generator().manual_seed(3))
    got, got_cache = forwards(fused, ids)
    want, want_cache = forwards(unfused, ids)
    for fused_logits, plain_logits in zip(got, want, strict=True):
        assert torch.equal(fused_logits, plain_logits)
    for mine, theirs in zip(got_cache.layers, want_cache.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)


@needs_kernel_cpu
def test_only_inputs_the_calls_take_run_fused(fused, monkeypatch):
    calls = record_unfused_rows(fused, monkeypatch)
    cache = new_cache()
    with torch.inference_mode():
        for length in (packed_rows() + 1, 1, packed_rows()):
            fused(input_ids=torch.ones(1, length, dtype=torch.long), cache=cache)
    assert calls == [packed_rows() + 1]  # the decode step and the 64 (8) rows ran fused


@needs_kernel_cpu
def test_a_batch_of_rows_computes_the_same_bits(fused, unfused):
    """Two sequences side by side, the shorter one left-padded, then a decode step with
    each row's own position, as ``runtime/batch.py`` passes them."""
    ids = torch.randint(100, 40000, (2, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0

    def run(model: Any) -> list[torch.Tensor]:
        cache = new_cache()
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)
            step = out.logits[:, -1:].argmax(-1)
            grown = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            positions = torch.tensor([[12], [9]])
            after = model(
                input_ids=step,
                attention_mask=grown,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
        return [out.logits, after.logits]

    for fused_logits, plain_logits in zip(run(fused), run(unfused), strict=True):
        assert torch.equal(fused_logits, plain_logits)


@needs_kernel_cpu
def test_collected_hidden_states_and_cacheless_forwards_match(fused, unfused):
    ids = torch.randint(100, 40000, (1, 9), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        mine = fused(input_ids=ids, output_hidden_states=True)
        theirs = unfused(input_ids=ids, output_hidden_states=True)
        plain = fused(input_ids=ids, use_cache=False)
    # Collecting runs the wrapped layers, whose hooks record every layer's output.
    assert len(mine.hidden_states) == len(fused.model.layers) + 1
    for a, b in zip(mine.hidden_states, theirs.hidden_states, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain.logits, theirs.logits)


def tiny(kind: str) -> Any:
    """A two-layer model of ``kind`` whose linear weights are Q4_1 blocks (unpacked)."""
    transformers = pytest.importorskip("transformers")
    from tests.models.test_packed_linear import gguf_q4_1

    config_class = getattr(transformers, f"{kind}Config")
    model_class = getattr(transformers, f"{kind}ForCausalLM")
    config = config_class(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        tie_word_embeddings=False,
    )
    model = model_class(config).eval()
    with torch.no_grad():
        for linear in model.model.modules():
            if isinstance(linear, torch.nn.Linear):
                linear.weight.copy_(gguf_q4_1(linear.out_features, linear.in_features))
    return model


@needs_kernel_cpu
def test_other_sizes_compute_the_same_bits():
    """Head size 32 and 128 intermediate features, against the same layers unfused."""
    model = tiny("Llama")
    fused_model, plain_model = pack_linear_layers(model), pack_linear_layers(model)
    assert fuse_decoder_layers(fused_model) == 2
    assert fuse_decoder_layers(fused_model) == 0  # already fused: left as they are
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(6))
    for model_ids in (ids, ids[:, :1]):
        with torch.inference_mode():
            assert torch.equal(
                fused_model(input_ids=model_ids).logits, plain_model(input_ids=model_ids).logits
            )


@needs_kernel_cpu
def test_layers_that_only_look_like_llamas_are_left_alone():
    """Qwen3 normalises q and k per head: same attribute names, other arithmetic."""
    pytest.importorskip("transformers.models.qwen3")
    model = pack_linear_layers(tiny("Qwen3"))
    assert model.model.layers[0].mlp.down_proj.format == "q4_1"
    assert fuse_decoder_layers(model) == 0


def test_a_model_without_packed_products_is_left_alone():
    model = tiny("Llama")  # Q4_1 weights, but in transformers' own float layers
    assert fuse_decoder_layers(model) == 0
    assert {type(layer).__name__ for layer in model.model.layers} == {"LlamaDecoderLayer"}
    assert fuse_decoder_layers(torch.nn.Linear(4, 4)) == 0
