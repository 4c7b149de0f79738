"""Linear layers with rounded weights (bfloat16, int8 weight-only, int8 W8A8): close to
float, a row's result never depends on its neighbours, the head ranks in float, and the
caller's model keeps its float layers."""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from ctxproto.models.bf16_linear import to_bf16
from ctxproto.models.head_rescoring import rescores_in_float
from ctxproto.models.int8_linear import quantize_int8


@dataclass(frozen=True)
class Rounder:
    rounds: Callable[[Any], Any]
    """Returns a copy of a model with its linear layers rounded."""
    body_class: str
    head_class: str
    layer_error: float
    """The largest relative error of a layer's rows against float."""
    greedy_agreement: float
    """The least share of the float model's greedy choices a rounded model keeps."""


ROUNDERS = {
    "bf16": Rounder(to_bf16, "Bf16Linear", "Bf16Head", 0.01, 0.9),
    "int8_weights": Rounder(
        functools.partial(quantize_int8, weights_only=True),
        "Int8WeightLinear",
        "Int8WeightLinear",
        0.02,
        0.9,
    ),
    "int8": Rounder(quantize_int8, "Int8Linear", "Int8Head", 0.02, 0.8),
}

modes = pytest.mark.parametrize("mode", sorted(ROUNDERS))


@modes
@pytest.mark.parametrize("bias", [False, True])
def test_body_layer_is_close_to_float_and_rows_are_independent(bias, mode):
    rounder = ROUNDERS[mode]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96, bias=bias))
    rounded = rounder.rounds(model)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    x[0] *= 50  # an outlier row: a per-call scale would coarsen every other row
    with torch.inference_mode():
        expected, got = model(x), rounded(x)
        alone = torch.cat([rounded(x[i : i + 1]) for i in range(len(x))])
    assert type(rounded[0]).__name__ == rounder.body_class
    assert type(model[0]) is torch.nn.Linear
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, alone, rtol=0, atol=0)
    error = (got - expected).norm(dim=-1) / expected.norm(dim=-1)
    assert error.max() < rounder.layer_error


@modes
def test_head_rescores_its_best_candidates_in_float_and_shares_the_float_weight(mode):
    rounder = ROUNDERS[mode]
    model = torch.nn.Module()
    model.lm_head = torch.nn.Linear(64, 200, bias=True)
    rounded = rounder.rounds(model)
    x = torch.randn(2, 25, 64, generator=torch.Generator().manual_seed(4))
    x[0, 0] *= 50
    with torch.inference_mode():
        expected, got = model.lm_head(x), rounded.lm_head(x)
        alone = rounded.lm_head(x[1:, 1:])
    assert type(rounded.lm_head).__name__ == rounder.head_class
    assert rescores_in_float(rounded.lm_head) and not rescores_in_float(model.lm_head)
    assert rounded.lm_head.weight is model.lm_head.weight
    assert got.shape == (2, 25, 200)
    assert torch.equal(got[1:, 1:], alone)
    # The top logits are float32's, not their rounded approximations (which may tie).
    torch.testing.assert_close(got.max(-1).values, expected.max(-1).values, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.models
@modes
def test_the_model_keeps_most_greedy_choices(lm, lm_tokenizer, mode):
    rounded = ROUNDERS[mode].rounds(lm)
    text = (
        "The router's warranty lasts two years from the date of purchase. To reset the "
        "router, hold the button on the back for ten seconds until the light blinks, "
        "then wait for it to turn solid green before you connect again."
    )
    ids = torch.tensor([lm_tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        expected = lm(input_ids=ids).logits.argmax(-1)
        got = rounded(input_ids=ids).logits.argmax(-1)
    assert (got == expected).float().mean() > ROUNDERS[mode].greedy_agreement
    assert rounded.model.embed_tokens.weight is lm.model.embed_tokens.weight
    assert type(lm.model.layers[0].mlp.up_proj) is torch.nn.Linear
