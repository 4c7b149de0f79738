import pytest
import torch

from ctxproto.errors import ConfigError
from ctxproto.runtime import GenerationParams
from ctxproto.runtime.sampling import request_generator, sample_next


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 5.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("max_new_tokens", 0),
        ("stop", [""]),
        ("beam_width", 4),
        ("seed", 2**63),  # past int64, where torch's generators refuse it
        ("seed", -(2**63) - 1),
    ],
)
def test_invalid_sampling_parameters_name_the_key(field, value):
    with pytest.raises(ConfigError) as caught:
        GenerationParams(**{field: value})
    assert caught.value.key == field


def test_defaults_are_greedy():
    params = GenerationParams()
    assert params.greedy and params.max_new_tokens == 256 and params.stop == []


def test_int64_seeds_are_accepted():
    assert GenerationParams(seed=2**63 - 1).seed == 2**63 - 1
    assert GenerationParams(seed=-(2**63)).seed == -(2**63)


def test_a_temperature_too_small_to_divide_by_decodes_greedily():
    """Logits over 1e-38 overflow to infinity, and sampling would draw from NaN."""
    logits = torch.tensor([10.0, 30.0, 20.0])
    for temperature in (1e-38, 9e-6):
        params = GenerationParams(temperature=temperature, seed=1)
        assert params.greedy
        assert sample_next(logits, params, request_generator(params, "cpu")) == 1
    assert not GenerationParams(temperature=1e-5).greedy
