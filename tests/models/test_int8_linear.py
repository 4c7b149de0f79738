"""int8 linear layers: close to float, and a row's result never depends on its neighbours."""

import pytest
import torch

from ctxproto.models.int8_linear import quantize_int8


def _layer(out_features: int, bias: bool) -> torch.nn.Sequential:
    torch.manual_seed(out_features)
    return torch.nn.Sequential(torch.nn.Linear(64, out_features, bias=bias))


@pytest.mark.parametrize("bias", [False, True])
def test_body_layer_is_close_to_float_and_rows_are_independent(bias):
    model = _layer(96, bias)
    quantized = quantize_int8(model)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    x[0] *= 50  # one outlier row: a per-call scale would crush the other rows' precision
    with torch.inference_mode():
        expected, got = model(x), quantized(x)
        alone = torch.cat([quantized(x[i : i + 1]) for i in range(len(x))])
    assert type(quantized[0]).__name__ == "Int8Linear"
    assert torch.equal(got, alone)
    error = (got - expected).norm(dim=-1) / expected.norm(dim=-1)
    assert error.max() < 0.02


def test_head_is_close_to_float_rows_are_independent_and_the_float_model_stays():
    model = torch.nn.Module()
    model.lm_head = torch.nn.Linear(64, 200, bias=False)
    quantized = quantize_int8(model)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(2))
    x[0, 0] *= 50
    with torch.inference_mode():
        expected, got = model.lm_head(x), quantized.lm_head(x)
        alone = quantized.lm_head(x[1:, 1:])
    assert type(quantized.lm_head).__name__ == "Int8Head"
    assert type(model.lm_head) is torch.nn.Linear
    assert got.shape == (2, 3, 200)
    assert torch.equal(got[1:, 1:], alone)
    error = (got - expected).norm(dim=-1) / expected.norm(dim=-1)
    assert error.max() < 0.02


@pytest.mark.models
def test_the_model_keeps_most_greedy_choices(lm, lm_tokenizer):
    quantized = quantize_int8(lm)
    text = (
        "The router's warranty lasts two years from the date of purchase. To reset the "
        "router, hold the button on the back for ten seconds until the light blinks, "
        "then wait for it to turn solid green before you connect again."
    )
    ids = torch.tensor([lm_tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        expected = lm(input_ids=ids).logits.argmax(-1)
        got = quantized(input_ids=ids).logits.argmax(-1)
    assert (got == expected).float().mean() > 0.8
    assert quantized.model.embed_tokens.weight is lm.model.embed_tokens.weight


def test_head_rescores_its_best_candidates_in_float():
    model = torch.nn.Module()
    model.lm_head = torch.nn.Linear(64, 200, bias=True)
    quantized = quantize_int8(model)
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected, got = model.lm_head(x), quantized.lm_head(x)
    # The top logits are the float ones, not their int8 approximations.
    torch.testing.assert_close(got.max(-1).values, expected.max(-1).values, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
