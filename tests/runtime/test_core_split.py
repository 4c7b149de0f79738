"""The core-split twin computes what the loaded model computes, on the same weights."""

import copy

import pytest
import torch

from ctxproto.models.core_split import split_over_cores

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


def test_a_layer_with_bias_matches_linear_and_follows_its_weight():
    linear = torch.nn.Linear(12, 8)
    model = torch.nn.Sequential(linear)
    split = split_over_cores(model, parts=2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # Up to 4 rows multiply weight-first, more rows input-first: both must match.
        for shape in [(1, 12), (3, 12), (2, 2, 12), (2, 5, 12)]:
            x = torch.randn(*shape, generator=generator)
            torch.testing.assert_close(split(x), model(x), rtol=0, atol=1e-6)
        split64 = split_over_cores(torch.nn.Sequential(torch.nn.Linear(12, 8)), parts=2).double()
        assert split64(x.double()).dtype == torch.float64


def test_a_split_model_copies_and_splitting_it_again_changes_nothing(twin):
    assert split_over_cores(twin, parts=2) is twin  # no nn.Linear left to split
    copied = copy.deepcopy(twin.lm_head)
    assert copied.weight.data_ptr() != twin.lm_head.weight.data_ptr()
