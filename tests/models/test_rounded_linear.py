"""Linear layers that round no input by a scale (bfloat16 weights, int8 weights):
close to float, rows independent, the caller's model untouched."""

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from ctxproto.models.bf16_linear import is_bf16_head, to_bf16
from ctxproto.models.int8_linear import quantize_int8

ROUNDERS: dict[str, tuple[Callable[[Any], Any], str, float]] = {
    "bf16": (to_bf16, "Bf16Linear", 0.01),
    "int8_weights": (functools.partial(quantize_int8, weights_only=True), "Int8WeightLinear", 0.02),
}
"""Mode: (the function that rounds a model, its body layer class, the largest relative
error of a layer's rows against float)."""


@pytest.mark.parametrize("mode", sorted(ROUNDERS))
@pytest.mark.parametrize("bias", [False, True])
def test_body_layer_is_close_to_float_and_rows_are_independent(bias, mode):
    rounder, layer_class, tolerance = ROUNDERS[mode]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96, bias=bias))
    rounded = rounder(model)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    x[0] *= 50  # an outlier row: with no per-call scale, it coarsens no other row
    with torch.inference_mode():
        expected, got = model(x), rounded(x)
        alone = torch.cat([rounded(x[i : i + 1]) for i in range(len(x))])
    assert type(rounded[0]).__name__ == layer_class
    assert type(model[0]) is torch.nn.Linear
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, alone, rtol=0, atol=0)
    error = (got - expected).norm(dim=-1) / expected.norm(dim=-1)
    assert error.max() < tolerance


@pytest.mark.parametrize("mode", sorted(ROUNDERS))
def test_head_rescores_its_best_candidates_in_float_and_shares_the_float_weight(mode):
    model = torch.nn.Module()
    model.lm_head = torch.nn.Linear(64, 200, bias=True)
    rounded = ROUNDERS[mode][0](model)
    x = torch.randn(2, 25, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected, got = model.lm_head(x), rounded.lm_head(x)
    assert is_bf16_head(rounded.lm_head) == (mode == "bf16")
    assert not is_bf16_head(model.lm_head)
    assert rounded.lm_head.weight is model.lm_head.weight
    assert got.shape == (2, 25, 200)
    # The top logits are float32's, not their bfloat16 roundings (which tie).
    torch.testing.assert_close(got.max(-1).values, expected.max(-1).values, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.models
@pytest.mark.parametrize("mode", sorted(ROUNDERS))
def test_the_model_keeps_nearly_every_greedy_choice(lm, lm_tokenizer, mode):
    rounded = ROUNDERS[mode][0](lm)
    text = (
        "The router's warranty lasts two years from the date of purchase. To reset the "
        "router, hold the button on the back for ten seconds until the light blinks, "
        "then wait for it to turn solid green before you connect again."
    )
    ids = torch.tensor([lm_tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        expected = lm(input_ids=ids).logits.argmax(-1)
        got = rounded(input_ids=ids).logits.argmax(-1)
    assert (got == expected).float().mean() > 0.9
    assert rounded.model.embed_tokens.weight is lm.model.embed_tokens.weight
    assert type(lm.model.layers[0].mlp.up_proj) is torch.nn.Linear
