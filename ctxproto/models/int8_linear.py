"""Linear layers with int8 weights: a CPU decode step that reads a quarter of the bytes.

A decode step multiplies one row per request by every weight matrix, so on CPU it is
bound by streaming the weights from memory: 540 MB per step for SmolLM2-135M in
float32, a fifth of it the 49k-row LM head. Stored as int8 the same weights take a
quarter of that, and the products run on the CPU's int8 dot-product instructions
(AVX512-VNNI here), which also makes a many-row prefill several times faster.

The scheme is the usual W8A8 "per-channel weights, per-token activations"
(LLM.int8(), SmoothQuant's per-token variant): each weight row is rounded to int8
with its own scale, and at each call each input row is rounded to int8 with its own
scale; the integer products are summed exactly in int32 and rescaled to float.
Per-token (not per-call) activation scales matter for the engine: a row's numbers
never depend on the rows next to it, so a token gets the same result in a full
prefill, in a cached prefill of the suffix, and in a batched decode step — which is
what keeps greedy output identical with the prefix cache on and off.

The body layers multiply with ``torch._int_mm``. The LM head, whose one-row product
``_int_mm`` runs slowly at 49k columns, uses fbgemm's dynamic-quantisation kernel
once per row (with one row, its per-call scale is a per-token scale). It is tied to
the embedding: only the head's product is quantised; the lookup keeps the float
table.

Rounding changes the numbers, so answers can differ from float32's: docs/runtime.md
reports greedy agreement with float32 (``ctxproto bench decode``).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from ctxproto._extras import require
from ctxproto.models.linear_swap import swap_linear_layers

__all__ = ["quantize_int8"]

_INT8_MAX = 127


def quantize_int8(model: Any, *, head_only: bool = False, in_place: bool = False) -> Any:
    """``model`` with its linear layers multiplying by int8 weights (CPU only).

    The layer named ``lm_head`` gets the per-row head kernel; all others the
    batched one, unless ``head_only`` keeps them float. Without ``in_place``, a copy
    sharing the untouched weights (the embedding, the norms) is returned and
    ``model`` keeps its float layers.
    """
    body, head = _int8_linear(), _int8_head()

    def replace(name: str, linear: Any) -> Any:
        if name.split(".")[-1] == "lm_head":
            return head(linear)
        return None if head_only else body(linear)

    return swap_linear_layers(model, replace, in_place=in_place)


def _rowwise_int8(tensor: Any) -> tuple[Any, Any]:
    """Symmetric int8 rounding of each row, and the float scale of each row."""
    torch = require("torch", extra="runtime")
    scale = tensor.abs().amax(-1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny)
    scale = scale.float().div_(_INT8_MAX)
    return torch.round(tensor.float() / scale).to(torch.int8), scale


@functools.cache
def _int8_linear() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class Int8Linear(module):  # type: ignore[misc]
        """``x @ W.T + b`` as an exact int32 product of per-token int8 ``x`` and int8 ``W``."""

        def __init__(self, linear: Any) -> None:
            super().__init__()
            weight, scale = _rowwise_int8(linear.weight.detach())
            # [in, out]: the layout _int_mm multiplies fastest, as a view of the rows.
            self.register_buffer("weight_t", weight.t())
            self.register_buffer("weight_scale", scale.view(1, -1))
            self.bias = linear.bias
            self.in_features = linear.in_features
            self.out_features = linear.out_features

        def forward(self, x: Any) -> Any:
            rows, scale = _rowwise_int8(x.reshape(-1, self.in_features))
            out = torch._int_mm(rows, self.weight_t).float().mul_(scale * self.weight_scale)
            if self.bias is not None:
                out.add_(self.bias)
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8"

    return Int8Linear


@functools.cache
def _int8_head() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class Int8Head(module):  # type: ignore[misc]
        """The LM head on fbgemm's int8 kernel, one call per row (one scale per token)."""

        def __init__(self, linear: Any) -> None:
            super().__init__()
            weight = linear.weight.detach().float()
            _, scale = _rowwise_int8(weight)
            zero_points = torch.zeros(weight.size(0), dtype=torch.long)
            with warnings.catch_warnings():
                # torch 2.13 deprecates creating quantized tensors; fbgemm's packed
                # weight is still built from one (torch is pinned, pyproject.toml).
                warnings.filterwarnings("ignore", message=".*quantize_per_channel.*")
                quantized = torch.quantize_per_channel(
                    weight, scale.view(-1).double(), zero_points, 0, torch.qint8
                )
                bias = None if linear.bias is None else linear.bias.detach().float()
                self.packed = torch.ops.quantized.linear_prepack(quantized, bias)
            # Without VNNI, fbgemm's uint8 x int8 products can saturate 16-bit sums
            # unless activations use 7 bits; VNNI sums in 32 bits and uses all 8.
            self.reduce_range = not torch.cpu._is_vnni_supported()
            self.in_features = linear.in_features
            self.out_features = linear.out_features

        def forward(self, x: Any) -> Any:
            rows = x.reshape(-1, self.in_features).float()
            # fbgemm's activation scale is per call: one row per call keeps it per token.
            out = torch.cat(
                [
                    torch.ops.quantized.linear_dynamic(row, self.packed, self.reduce_range)
                    for row in rows.split(1)
                ]
            )
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8"

    return Int8Head
