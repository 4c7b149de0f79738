"""Linear layers with bfloat16 weights: a CPU decode step that reads half the bytes.

A decode step multiplies one row per request by every weight matrix, so on CPU it
is bound by streaming the weights from memory (540 MB per step for SmolLM2-135M in
float32). Stored in bfloat16 they take half that, and CPUs with AVX512-BF16 (or
AMX) multiply bfloat16 directly, summing in float32 (oneDNN).

Only the products change: each linear layer rounds its input rows to bfloat16,
multiplies, and returns float32 rounded from bfloat16 (torch's CPU kernels have no
float32 output for bfloat16 inputs); the bias is added in float32. The residual
stream, the norms, attention and softmax stay float32, and there is no per-call
scale. oneDNN may still sum several rows' products in another order than one
row's (an Intel Xeon with AVX512-BF16 did, where the AMD EPYC did not), so a
row's output can depend on how many rows are multiplied with it: the engine
does not verify speculative drafts in this mode. bfloat16 keeps
eight significant bits where int8 with a per-token scale keeps about seven, and
never saturates, so answers drift from float32's less than with ``int8``
(docs/runtime.md has the measured agreement).

The LM head is tied to the embedding: the lookup keeps the float table, the head
multiplies by a bfloat16 copy and rescores its best candidates from the float
weight (``head_rescoring``), since bfloat16 logits tie.

oneDNN threads each product itself, so the layers are not also split over the
cores (``core_split``): the split ran no faster for bfloat16 (docs/runtime.md).
"""

from __future__ import annotations

import functools
from typing import Any

from ctxproto._extras import require
from ctxproto.models.head_rescoring import rescore_best
from ctxproto.models.linear_swap import swap_linear_layers

__all__ = ["to_bf16"]


def to_bf16(model: Any, *, in_place: bool = False) -> Any:
    """``model`` with its linear layers multiplying by bfloat16 weights.

    The layer named ``lm_head`` rescores its best candidates in float. Without
    ``in_place``, a copy sharing the untouched weights (the embedding, the norms)
    is returned and ``model`` keeps its float layers.
    """
    body, head = _bf16_linear(), _bf16_head()

    def replace(name: str, linear: Any) -> Any:
        return head(linear) if name.split(".")[-1] == "lm_head" else body(linear)

    return swap_linear_layers(model, replace, in_place=in_place)


@functools.cache
def _bf16_linear() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class Bf16Linear(module):  # type: ignore[misc]
        """``x @ W.T + b`` with ``x`` and ``W`` rounded to bfloat16, ``b`` added in float."""

        def __init__(self, linear: Any) -> None:
            super().__init__()
            self.register_buffer("weight_bf16", linear.weight.detach().to(torch.bfloat16))
            self.bias = linear.bias
            self.in_features = linear.in_features
            self.out_features = linear.out_features

        def forward(self, x: Any) -> Any:
            out = torch.nn.functional.linear(x.to(torch.bfloat16), self.weight_bf16).to(x.dtype)
            if self.bias is not None:
                out += self.bias
            return out

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, bf16"

    return Bf16Linear


@functools.cache
def _bf16_head() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class Bf16Head(module):  # type: ignore[misc]
        """The LM head multiplied in bfloat16, its best candidates rescored in float.

        ``weight`` stays the float (tied) weight, so code that reads the head's
        weight sees the model's own; the product reads the bfloat16 copy.
        """

        rescores_best = True  # head_rescoring.rescores_in_float

        def __init__(self, linear: Any) -> None:
            super().__init__()
            self.weight = linear.weight
            self.bias = linear.bias
            self.register_buffer("weight_bf16", linear.weight.detach().to(torch.bfloat16))
            self.in_features = linear.in_features
            self.out_features = linear.out_features

        def forward(self, x: Any) -> Any:
            rows = x.reshape(-1, self.in_features).float()
            out = torch.nn.functional.linear(rows.to(torch.bfloat16), self.weight_bf16).float()
            if self.bias is not None:
                out += self.bias
            rescore_best(out, rows, self.weight, self.bias)
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, bf16"

    return Bf16Head
