"""Linear layers that multiply float32 rows by a GGUF model's own 4- and 8-bit blocks.

The bundled model ships as a GGUF file and the loader dequantises it to float32
(``loader.py``), so every weight of its body is exactly ``d * q + m`` of a Q4_1
block (32 weights sharing a float16 scale ``d`` and offset ``m``, ``q`` in
0..15), and every weight of its tied embedding and head ``d * q`` of a Q8_0 block
(``q`` in -127..127). A CPU decode step is bound by streaming the weights: the
float32 body of SmolLM2-135M is 425 MB per token, the same weights as blocks
80 MB. ``PackedLinear`` keeps the blocks and multiplies with ctxproto's own kernel
(``kernels.py``, ``csrc/packed_matmul.cpp``), which rebuilds each float32 weight
in registers with the loader's two roundings: every product is with the very
weight of the float layer, and only the order of the sums differs, as with the
split layers (``core_split``). The 210 body products of one decode row took
4.9 ms against the split float layers' 17.5 ms (docs/runtime.md).

The blocks are found in the float32 weights themselves rather than read from the
file: in each block of 32, ``m`` is the least weight, ``d`` the float16 nearest a
fifteenth of the range (or one of its two neighbours), ``q = round((w - m) / d)``;
a matrix is packed only if every block rebuilds bit for bit. So whatever file or
name mapping a model came through (llama's q and k rows are permuted on load),
its weights are packed when they are blocks, and any other model is left as it is.

Up to ``packed_rows()`` rows go through the kernel; longer prefills, where the
float product was as fast, go through the float layer it wraps.
"""

from __future__ import annotations

import functools
from typing import Any

from ctxproto._extras import require
from ctxproto.models.kernels import kernel_lanes, load_kernels
from ctxproto.models.linear_swap import swap_linear_layers

__all__ = [
    "PACKED_ROWS",
    "PACKED_ROWS_AVX2",
    "find_q4_1",
    "find_q8_0",
    "pack_linear_layers",
    "packed_rows",
]

PACKED_ROWS = 64
"""Rows up to which the kernel multiplies with AVX-512: it beat the float32 product
at 64 rows (96.8 against 120.1 ms over the 210 body matrices) and was even at 128."""

PACKED_ROWS_AVX2 = 8
"""The same with AVX2 (8 floats a vector), where torch's float32 product wins sooner:
on an AMD EPYC (Zen 3), 576 by 1536, 0.23 against 0.30 ms at 8 rows, 0.48 against
0.38 at 16, 1.77 against 1.01 at 64. Prefills then go to torch (``runtime/prefill.py``)."""


def packed_rows() -> int:
    """Rows up to which the kernel multiplies on this CPU (``PACKED_ROWS``,
    ``PACKED_ROWS_AVX2``)."""
    return PACKED_ROWS if kernel_lanes() >= 16 else PACKED_ROWS_AVX2


_BLOCK = 32
_Q4_1_MAX = 15
_Q8_0_MAX = 127


def pack_linear_layers(model: Any, *, in_place: bool = False) -> Any:
    """``model`` with each linear layer whose weights are Q4_1 or Q8_0 blocks packed.

    Returns ``model`` itself on a GPU, where the kernels cannot be built, or when
    no weight is made of blocks; otherwise a copy sharing the weights (or
    ``model``, changed, with ``in_place``).
    """
    torch = require("torch", extra="runtime")
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or first.dtype != torch.float32:
        return model
    if not load_kernels():
        return model
    layer_class = _packed_linear()

    def replace(_name: str, linear: Any) -> Any:
        blocks = _blocks(linear.weight)
        return None if blocks is None else layer_class(linear, blocks)

    return swap_linear_layers(model, replace, in_place=in_place)


def _blocks(weight: Any) -> tuple[Any, ...] | None:
    found_before = _found_blocks()
    # An in-place change through the weight (``load_state_dict``, ``copy_``) bumps
    # its version, a new ``.data`` moves it: the blocks are found again. A write
    # through ``.data`` itself goes unseen, and layers already packed keep theirs.
    state = (weight._version, weight.data_ptr())
    if weight in found_before and found_before[weight][0] == state:
        return found_before[weight][1]  # type: ignore[no-any-return]
    found = None
    for find in (find_q4_1, find_q8_0):
        # One row first: a matrix of other weights is turned down in microseconds.
        if find(weight.detach()[:1]) is not None:
            found = find(weight.detach())
            break
    found_before[weight] = (state, found)
    return found


@functools.cache
def _found_blocks() -> Any:
    """The blocks found for each weight tensor, kept while it lives: every engine built
    on the same loaded model shares them, and finding them again takes a second."""
    return require("torch.utils.weak", extra="runtime").WeakIdKeyDictionary()


def find_q4_1(weight: Any) -> tuple[Any, Any, Any] | None:
    """``(qs, d, m)`` if every block of 32 weights of each row is ``d * q + m``, else None.

    ``qs`` is uint8 ``[out, in / 2]`` (byte ``j`` of a block: ``q[j]`` in the low
    nibble, ``q[j + 16]`` in the high one, as in GGUF), ``d`` and ``m`` float32
    ``[out, in / 32]``, each exactly a float16 value.
    """
    torch = require("torch", extra="runtime")
    if not _blockable(weight):
        return None
    blocks = weight.reshape(-1, _BLOCK)
    offset = blocks.amin(-1, keepdim=True)
    if not torch.equal(offset.half().float(), offset):
        return None
    rebuilt = _rebuild(blocks, offset, _Q4_1_MAX, (blocks.amax(-1, keepdim=True) - offset))
    if rebuilt is None:
        return None
    q, scale = rebuilt
    pairs = q.to(torch.uint8).view(-1, 2, _BLOCK // 2)
    qs = (pairs[:, 0] | (pairs[:, 1] << 4)).reshape(weight.size(0), -1)
    rows = weight.size(0)
    return qs.contiguous(), scale.reshape(rows, -1).contiguous(), offset.reshape(rows, -1).clone()


def find_q8_0(weight: Any) -> tuple[Any, Any] | None:
    """``(qs, d)`` if every block of 32 weights of each row is ``d * q``, else None.

    ``qs`` is int8 ``[out, in]``, ``d`` float32 ``[out, in / 32]``, each exactly a
    float16 value.
    """
    torch = require("torch", extra="runtime")
    if not _blockable(weight):
        return None
    blocks = weight.reshape(-1, _BLOCK)
    rebuilt = _rebuild(blocks, None, _Q8_0_MAX, blocks.abs().amax(-1, keepdim=True))
    if rebuilt is None:
        return None
    q, scale = rebuilt
    return q.to(torch.int8).reshape(weight.shape).contiguous(), scale.reshape(weight.size(0), -1)


def _blockable(weight: Any) -> bool:
    torch = require("torch", extra="runtime")
    return bool(
        weight.dim() == 2
        and weight.dtype == torch.float32
        and weight.size(1) % _BLOCK == 0
        and weight.is_contiguous()
        and weight.numel() > 0
    )


def _rebuild(blocks: Any, offset: Any | None, q_max: int, span: Any) -> tuple[Any, Any] | None:
    """Integer ``q`` and float16-exact scales with ``scale * q (+ offset) == blocks`` exactly.

    The scale is the float16 nearest ``span / q_max`` or one of its neighbours;
    each block keeps the first candidate that rebuilds it. None if a block has none.
    """
    torch = require("torch", extra="runtime")
    nearest = (span / q_max).half()
    found = torch.zeros(blocks.size(0), 1, dtype=torch.bool)
    q_found = torch.zeros_like(blocks)
    scale_found = torch.zeros_like(span)
    shifted = blocks if offset is None else blocks - offset
    for step in (0, 1, -1):
        scale = (
            (nearest.view(torch.int16) + step).view(torch.float16).float()
            if step
            else nearest.float()
        )
        divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round(shifted / divisor).clamp_(-q_max if offset is None else 0, q_max)
        product = scale * q
        rebuilt = product if offset is None else product + offset
        # Bit for bit: == would take -0.0 for 0.0.
        ok = (rebuilt.view(torch.int32) == blocks.view(torch.int32)).all(-1, keepdim=True)
        new = ok & ~found
        q_found = torch.where(new, q, q_found)
        scale_found = torch.where(new, scale, scale_found)
        found |= ok
        if bool(found.all()):
            return q_found, scale_found
    return None


@functools.cache
def _packed_linear() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class PackedLinear(module):  # type: ignore[misc]
        """A linear layer multiplying up to ``packed_rows()`` rows by its weight's blocks.

        ``float_layer`` (the layer it replaced, which the engine may split over
        the cores) multiplies longer inputs and keeps ``weight`` for whoever reads it.
        """

        def __init__(self, linear: Any, blocks: tuple[Any, ...]) -> None:
            super().__init__()
            self.float_layer = linear
            self.in_features = linear.in_features
            self.out_features = linear.out_features
            self.format = "q4_1" if len(blocks) == 3 else "q8_0"
            for name, tensor in zip(("qs", "d", "m"), blocks, strict=False):
                self.register_buffer(name, tensor, persistent=False)
            self._matmul = getattr(torch.ops.ctxproto, f"{self.format}_matmul")
            self._rows = packed_rows()

        @property
        def weight(self) -> Any:
            return self.float_layer.weight

        @property
        def bias(self) -> Any:
            return self.float_layer.bias

        def forward(self, x: Any) -> Any:
            flat = x.reshape(-1, self.in_features)
            if flat.size(0) > self._rows or x.dtype != torch.float32:
                return self.float_layer(x)
            blocks = (self.qs, self.d, self.m) if self.format == "q4_1" else (self.qs, self.d)
            out = self._matmul(flat.contiguous(), *blocks)
            if self.bias is not None:
                out.add_(self.bias)
            return out.reshape(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            sizes = f"in_features={self.in_features}, out_features={self.out_features}"
            return f"{sizes}, {self.format}"

    return PackedLinear
