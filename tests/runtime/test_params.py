import pytest

from ctxproto.errors import ConfigError
from ctxproto.runtime import GenerationParams


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
    ],
)
def test_invalid_sampling_parameters_name_the_key(field, value):
    with pytest.raises(ConfigError) as caught:
        GenerationParams(**{field: value})
    assert caught.value.key == field


def test_defaults_are_greedy():
    params = GenerationParams()
    assert params.greedy and params.max_new_tokens == 256 and params.stop == []
