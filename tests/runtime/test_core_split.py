"""The core-split twin computes what the loaded model computes, on the same weights."""

import pytest
import torch

from ctxproto.core_split import split_over_cores

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def twin(lm):
    return split_over_cores(lm, parts=2)


def test_twin_shares_every_weight_and_leaves_the_original_alone(lm, twin):
    assert twin is not lm
    original = dict(lm.named_parameters())
    for name, parameter in twin.named_parameters():
        assert parameter.data_ptr() == original[name].data_ptr(), name
    assert type(lm.lm_head) is torch.nn.Linear
    assert type(twin.lm_head).__name__ == "SplitLinear"
    assert type(twin.model.layers[0].mlp.down_proj).__name__ == "SplitLinear"


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_twin_logits_equal_the_originals(lm, twin, rows):
    generator = torch.Generator().manual_seed(rows)
    ids = torch.randint(100, 40_000, (1, rows), generator=generator)
    with torch.inference_mode():
        expected = lm(input_ids=ids).logits
        got = twin(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_one_part_or_no_divisible_layer_keeps_the_model(lm):
    assert split_over_cores(lm, parts=1) is lm
    assert split_over_cores(lm, parts=49_153) is lm
