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
Per-token (not per-call) activation scales keep a row's numbers independent of
the rows next to it (in a prefill and in a batched decode step); torch's dynamic
quantisation, with one scale per call, let an outlier token coarsen every other
row and wrecked answers.

The body layers multiply with ``torch._int_mm``. The LM head, whose one-row product
``_int_mm`` runs slowly at 49k columns, uses fbgemm's dynamic-quantisation kernel
once per row (with one row, its per-call scale is a per-token scale), then rescores
its best candidates in float (``Int8Head``). It is tied to the embedding: only the
head's product is quantised; the lookup keeps the float table.

``int8_weights`` is the weight-only variant (W8A16, as gpt-fast runs int8 on
CPU): the same int8 rows and scales, but the inputs are only rounded to
bfloat16, with no per-token scale (a row is rounded by its own values only),
and ``torch._weight_int8pack_mm`` multiplies them in one call, summing in
float32 and rounding each output to bfloat16 before the float32 row scale
multiplies it (``Int8WeightLinear``; its head rescores like ``Int8Head``). One decode
row took 119 us against float32's 301 us on a 1536 x 576 weight (one thread),
and the kernel gives a row the same bits whatever rows it is multiplied with,
which a prefix-cached prompt needs.

Rounding the body's inputs changes the numbers, so answers can differ from
float32's, and a last-bit difference between two paths (a cached and a full
prefill) can cross a rounding step: docs/runtime.md reports greedy agreement
with float32 (``ctxproto bench decode``) and what each engine mode guarantees.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from ctxproto._extras import require
from ctxproto.models.head_rescoring import rescore_best
from ctxproto.models.linear_swap import swap_linear_layers

__all__ = ["quantize_int8"]

_INT8_MAX = 127


def quantize_int8(
    model: Any, *, head_only: bool = False, weights_only: bool = False, in_place: bool = False
) -> Any:
    """``model`` with its linear layers multiplying by int8 weights (CPU only).

    The layer named ``lm_head`` gets the per-row head kernel; all others the
    batched one, unless ``head_only`` keeps them float. ``weights_only`` rounds
    no input to int8 (``Int8WeightLinear`` everywhere, the head rescored). Without
    ``in_place``, a copy sharing the untouched weights (the embedding, the norms)
    is returned and ``model`` keeps its float layers.
    """
    body, head = _int8_linear(), _int8_head()
    if weights_only:
        body = head = _int8_weight_linear()

    def replace(name: str, linear: Any) -> Any:
        if name.split(".")[-1] == "lm_head":
            return head(linear, rescore=True) if weights_only else head(linear)
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
        """The LM head on fbgemm's int8 kernel, with its top candidates rescored in float.

        int8 logits rank the vocabulary almost as float32 does, but near-ties at the
        top flip (about one greedy token in twenty on chat answers). So the
        ``head_rescoring.RESCORED`` best int8 candidates of each row are recomputed from the
        float weight, which the head shares with the embedding: the winner, and the
        probabilities that sampling draws from, come from float32 logits whenever
        the float32 winner is among them, for 64 dot products more per row.
        """

        rescores_best = True  # head_rescoring.rescores_in_float

        def __init__(self, linear: Any) -> None:
            super().__init__()
            self.weight = linear.weight
            self.bias = linear.bias
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
            rescore_best(out, rows, self.weight, self.bias)
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8"

    return Int8Head


@functools.cache
def _int8_weight_linear() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class Int8WeightLinear(module):  # type: ignore[misc]
        """``x @ W.T + b`` with int8 ``W`` (a scale per row) and ``x`` rounded to bfloat16.

        With ``rescore`` (the LM head) the best candidates of each row are
        recomputed from the float weight, which stays ``weight``: greedy picks and
        sampling see float32 logits at the top, as with ``Int8Head``.
        """

        def __init__(self, linear: Any, *, rescore: bool = False) -> None:
            super().__init__()
            weight, scale = _rowwise_int8(linear.weight.detach())
            self.register_buffer("weight_int8", weight)
            # The kernel takes bfloat16 scales only; rounding them would bias every
            # output channel, so it gets ones and the float32 scales follow.
            self.register_buffer("unit_scale", torch.ones(weight.size(0), dtype=torch.bfloat16))
            self.register_buffer("weight_scale", scale.view(-1))
            self.weight = linear.weight if rescore else None
            self.rescores_best = rescore  # head_rescoring.rescores_in_float
            self.bias = linear.bias
            self.in_features = linear.in_features
            self.out_features = linear.out_features

        def forward(self, x: Any) -> Any:
            rows = x.reshape(-1, self.in_features)
            out = torch.ops.aten._weight_int8pack_mm(
                rows.to(torch.bfloat16), self.weight_int8, self.unit_scale
            ).float()
            out *= self.weight_scale
            if self.bias is not None:
                out += self.bias
            if self.weight is not None:
                rescore_best(out, rows, self.weight, self.bias)
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            sizes = f"in_features={self.in_features}, out_features={self.out_features}"
            return f"{sizes}, int8 weights"

    return Int8WeightLinear
