"""Layers that multiply by a GGUF model's own Q4_1 and Q8_0 blocks: found only where the
float weights are blocks bit for bit, the same weights as the float layer, a row's
result independent of its neighbours and of the thread count, and the caller's model
untouched."""

import warnings
from typing import Any

import pytest
import torch

from ctxproto.models import kernels
from ctxproto.models.cpu_info import cpu_features, read_cpuinfo
from ctxproto.models.packed_linear import find_q4_1, find_q8_0, pack_linear_layers, packed_rows
from tests.conftest import needs_kernel_cpu


def gguf_q4_1(rows: int, columns: int) -> torch.Tensor:
    """A float32 weight dequantised from random Q4_1 blocks, as the GGUF loader does."""
    generator = torch.Generator().manual_seed(0)
    blocks = rows * columns // 32
    scale = (torch.rand(blocks, 1, generator=generator) * 0.01).half().float()
    offset = (torch.randn(blocks, 1, generator=generator) * 0.05).half().float()
    q = torch.randint(0, 16, (blocks, 32), generator=generator).float()
    q[:, 0], q[:, 1] = 0, 15  # the least and the greatest weight of each block, as GGUF's
    return (scale * q + offset).reshape(rows, columns)


def gguf_q8_0(rows: int, columns: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    blocks = rows * columns // 32
    scale = (torch.rand(blocks, 1, generator=generator) * 0.001).half().float()
    q = torch.randint(-127, 128, (blocks, 32), generator=generator).float()
    q[:, 0] = 127
    return (scale * q).reshape(rows, columns)


def packed(weight: torch.Tensor, bias: bool = False) -> tuple[Any, Any]:
    linear = torch.nn.Linear(weight.size(1), weight.size(0), bias=bias)
    with torch.no_grad():
        linear.weight.copy_(weight)
    model = torch.nn.Sequential(linear)
    return model, pack_linear_layers(model)


def test_blocks_rebuild_the_float_weights_bit_for_bit():
    weight = gguf_q4_1(96, 128)
    found = find_q4_1(weight)
    assert found is not None
    qs, scale, offset = found
    assert qs.dtype == torch.uint8 and qs.shape == (96, 64) and scale.shape == (96, 4)
    # Byte j of a block holds weights j (low nibble) and j + 16 (high nibble).
    blocks = qs.view(96, 4, 16)
    q = torch.cat([blocks & 0x0F, blocks >> 4], dim=-1).float()
    rebuilt = (scale.unsqueeze(-1) * q + offset.unsqueeze(-1)).reshape(96, 128)
    assert torch.equal(rebuilt, weight)
    found8 = find_q8_0(gguf_q8_0(64, 96))
    assert found8 is not None
    q8, scale8 = found8
    assert q8.dtype == torch.int8
    assert torch.equal(scale8.repeat_interleave(32, dim=1) * q8.float(), gguf_q8_0(64, 96))


def one_off(weight: torch.Tensor, value: float | None = None) -> torch.Tensor:
    """``weight`` with its element [3, 5] one float32 step up, or set to ``value``."""
    changed = weight.clone()
    bumped = torch.nextafter(changed[3, 5], torch.tensor(float("inf")))
    changed[3, 5] = bumped if value is None else value
    return changed


@needs_kernel_cpu
@pytest.mark.parametrize(
    "weight",
    [
        torch.randn(64, 128),  # float weights that were never blocks
        gguf_q4_1(64, 128).add_(1e-3),  # offsets off float16
        torch.randn(64, 100),  # rows that are not whole blocks
        one_off(gguf_q4_1(64, 128)),  # one weight a bit off
        one_off(gguf_q8_0(64, 128)),
        one_off(gguf_q4_1(64, 128), float("nan")),
        one_off(gguf_q8_0(64, 128), float("inf")),
    ],
)
def test_other_weights_are_left_as_they_are(weight):
    assert find_q4_1(weight) is None
    assert find_q8_0(weight) is None
    model, same = packed(weight)
    assert same is model


@needs_kernel_cpu
@pytest.mark.parametrize("make", [gguf_q4_1, gguf_q8_0])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_layer_multiplies_by_the_same_weights(make, bias):
    model, copy = packed(make(160, 192), bias)
    layer = copy[0]
    assert type(layer).__name__ == "PackedLinear"
    assert type(model[0]) is torch.nn.Linear  # the caller's model keeps its layer
    assert layer.weight is model[0].weight
    x = torch.randn(2, 5, 192)
    with torch.no_grad():
        expected = model(x)
        out = copy(x)
    assert out.shape == expected.shape
    # Only the order of the sums differs.
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@needs_kernel_cpu
@pytest.mark.parametrize("make", [gguf_q4_1, gguf_q8_0])
def test_the_kernel_multiplies_by_each_weight_exactly(make):
    weight = make(96, 128)
    _, copy = packed(weight)
    # One-hot rows pick single weights out: nothing is summed, so any rounding
    # of the rebuilt weight (a fused multiply-add, a wrong nibble) shows.
    with torch.no_grad():
        picked = copy(torch.eye(128)[:64])
    assert torch.equal(picked, weight.T[:64])


@needs_kernel_cpu
def test_the_kernels_use_the_widest_vectors_of_this_cpu():
    """AVX-512 CPUs run 16 floats a vector, AVX2 ones (most AMD Zen 2 and 3, many
    Intel CPUs) 8: before their own code paths those kept torch's slower kernels."""
    assert kernels.load_kernels()
    features = cpu_features(read_cpuinfo()) or set()
    assert kernels._vector_width(torch) == (16 if "avx512f" in features else 8)


@needs_kernel_cpu
def test_a_weight_changed_in_place_is_found_again():
    weight = gguf_q4_1(64, 128)
    model, first = packed(weight)
    assert first is not model
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(64, 128))
    assert pack_linear_layers(model) is model


@needs_kernel_cpu
def test_a_rows_result_depends_on_neither_its_neighbours_nor_the_threads():
    _, copy = packed(gguf_q4_1(256, 576))
    x = torch.randn(min(13, packed_rows()), 576)  # rows the kernel takes (8 with AVX2)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    with torch.no_grad():
        together = copy(x)
        alone = torch.cat([copy(x[row : row + 1]) for row in range(len(x))])
        torch.set_num_threads(1)
        try:
            one_thread = copy(x)
        finally:
            torch.set_num_threads(threads)
    assert torch.equal(together, alone)
    assert torch.equal(together, one_thread)


@needs_kernel_cpu
def test_long_inputs_go_through_the_float_layer():
    model, copy = packed(gguf_q4_1(64, 128))
    x = torch.randn(packed_rows() + 1, 128)
    with torch.no_grad():
        assert torch.equal(copy(x), model(x))


@needs_kernel_cpu
def test_the_bundled_model_is_blocks_throughout(lm):
    copy = pack_linear_layers(lm)
    layers = [module for module in copy.modules() if type(module).__name__ == "PackedLinear"]
    assert len(layers) == 7 * lm.config.num_hidden_layers + 1
    assert copy.lm_head.format == "q8_0"
    assert copy.model.layers[0].mlp.down_proj.format == "q4_1"
    assert type(lm.lm_head) is torch.nn.Linear


def test_without_kernels_the_model_stays_float(monkeypatch):
    def fail(_torch):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(kernels, "_build_and_load", fail)
    kernels.load_kernels.cache_clear()
    kernels.kernel_lanes.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert kernels.load_kernels() is False
        assert "could not be built (no compiler)" in str(caught[0].message)
        model, same = packed(gguf_q4_1(32, 64))
        assert same is model
    finally:
        kernels.load_kernels.cache_clear()
        kernels.kernel_lanes.cache_clear()


def test_a_cpu_without_vector_instructions_is_a_log_line_not_a_warning(monkeypatch, caplog):
    """Nothing can be done about a CPU without AVX2 or AVX-512: a RuntimeWarning there
    failed every engine start under warnings-as-errors (this suite, many apps)."""
    monkeypatch.setattr(kernels, "_build_and_load", lambda _torch: None)
    monkeypatch.setattr(kernels, "_vector_width", lambda _torch: 0)
    kernels.load_kernels.cache_clear()
    kernels.kernel_lanes.cache_clear()
    try:
        with warnings.catch_warnings(), caplog.at_level("INFO", logger=kernels.__name__):
            warnings.simplefilter("error")
            assert kernels.load_kernels() is False
        assert "need AVX2 (with FMA) or AVX-512, which this CPU lacks" in caplog.text
        model, same = packed(gguf_q4_1(32, 64))
        assert same is model
    finally:
        kernels.load_kernels.cache_clear()
        kernels.kernel_lanes.cache_clear()


BROKEN_COMPILER_CHECK = """
import warnings
from ctxproto.models.kernels import load_kernels
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(load_kernels(), *[str(w.message) for w in caught], sep="\\n")
"""


def test_a_compiler_that_fails_is_a_warning_not_a_crash(tmp_path):
    """torch asks ``$CXX --version`` before building; a compiler answering with an
    error raised CalledProcessError out of load_kernels, and the engine with it."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    false = shutil.which("false")
    assert false is not None
    environment = {
        **os.environ,
        "CXX": false,
        "CTXPROTO_CACHE_DIR": str(tmp_path),  # nothing built there: the build must run
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_COMPILER_CHECK],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    verdict, message = result.stdout.splitlines()[:2]
    assert verdict == "False"
    assert "could not be built" in message and "--version" in message
