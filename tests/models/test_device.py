"""A device torch cannot use is refused, naming ``device``, before any model loads."""

from collections.abc import Callable

import pytest

from ctxproto.errors import ConfigError

pytest.importorskip("torch")

MISSING = "some-org/no-model-here"
"""A model that is not installed: loading it would be a ModelNotAvailableError."""


def _embedder(device: str) -> object:
    from ctxproto.models.embedder import Embedder

    return Embedder(MISSING, device=device)


def _scorer(device: str) -> object:
    from ctxproto.models.self_information import SelfInformationScorer

    return SelfInformationScorer(MISSING, device=device)


def _token_compressor(device: str) -> object:
    from ctxproto.stages.token_compressor import TokenCompressor

    TokenCompressor(model=MISSING, embedder=MISSING, device=device).warm_up()
    return None


def _summarizer(device: str) -> object:
    from ctxproto.stages.summarizer import Summarizer

    Summarizer(model=MISSING, embedder=MISSING, device=device).warm_up()
    return None


@pytest.mark.parametrize("device", ["gpu", "cuda:99"])
@pytest.mark.parametrize("load", [_embedder, _scorer, _token_compressor, _summarizer])
def test_a_device_torch_cannot_use_is_a_config_error(load: Callable[[str], object], device):
    """``Embedder(device="gpu")`` was torch's RuntimeError and ``"cuda"`` without a
    GPU an AssertionError, raised after the model had been read."""
    with pytest.raises(ConfigError) as info:
        load(device)
    assert info.value.key == "device"
    assert repr(device) in str(info.value)
