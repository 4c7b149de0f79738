"""Linear layers that spread each small matrix product over every CPU core.

A decode step multiplies one row per request by every weight matrix of the model:
a matrix-vector product, bound by how fast the weights stream from memory. On CPU,
``torch.nn.functional.linear`` runs such products on one core (on our 2-core machine
it ran as fast with one thread as with two), so the weights stream at one core's
speed. Splitting each weight by output rows into one block per core and multiplying
the blocks as one ``bmm`` batch puts every core on its own block (up to
``_WEIGHT_FIRST_ROWS`` rows as ``W @ x.T``, which streams the rows faster): the SmolLM2-135M
decode step at a 1.8k-token context drops from about 66 ms to about 52 ms (``ctxproto bench
decode``, docs/runtime.md). Every output element is still the same dot product over
the same weights; only the kernel's summation order may differ in the last bits, and
greedy tokens matched transformers' in every test and benchmark run.

The runtime's engine gets a shallow copy that shares every weight tensor with the
loaded model, so code holding the original (the benchmarks' plain ``generate``
baseline) keeps transformers' own layers; the embedder, which owns its model, is
split in place.
"""

from __future__ import annotations

import functools
from typing import Any

from ctxproto._extras import require
from ctxproto.models.linear_swap import swap_linear_layers

__all__ = ["split_over_cores"]


def split_over_cores(model: Any, parts: int | None = None, *, in_place: bool = False) -> Any:
    """``model`` with its linear layers split over ``parts`` cores (default: torch's threads).

    Without ``in_place``, a copy of the module tree sharing the weights is split and
    returned. Returns ``model`` itself on CUDA, with one thread, or when nothing
    divides evenly.
    """
    torch = require("torch", extra="runtime")
    parts = parts or torch.get_num_threads()
    first = next(model.parameters(), None)
    if parts < 2 or first is None or first.device.type != "cpu":
        return model
    layer_class = _split_linear()
    return swap_linear_layers(
        model,
        lambda _name, linear: (
            layer_class(linear, parts) if linear.out_features % parts == 0 else None
        ),
        in_place=in_place,
    )


_WEIGHT_FIRST_ROWS = 4
"""Up to this many rows, each block multiplies as ``W @ x.T``, which streamed the
weights faster than ``x @ W.T`` on this CPU (decode steps, short verifies)."""


@functools.cache
def _split_linear() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class SplitLinear(module):  # type: ignore[misc]
        """``linear`` as a ``baddbmm`` over ``parts`` row blocks of the same weight tensor.

        The blocks are views taken at each call, so the layer follows its weight
        through ``.to()`` and ``.data`` swaps. The bias goes into the same
        multiply-add, as in ``linear``, rather than being rounded in a second add.
        """

        def __init__(self, linear: Any, parts: int) -> None:
            super().__init__()
            self.weight = linear.weight
            self.bias = linear.bias
            self.parts = parts
            self.in_features = linear.in_features
            self.out_features = linear.out_features

        def forward(self, x: Any) -> Any:
            flat = x.reshape(-1, self.in_features)
            if flat.size(0) <= _WEIGHT_FIRST_ROWS:
                return self._weight_first(flat).reshape(*x.shape[:-1], self.out_features)
            rows = flat.unsqueeze(0).expand(self.parts, -1, self.in_features)
            # [parts, in, out/parts]: views of the weight, no copy.
            blocks = self.weight.view(self.parts, -1, self.in_features).mT
            if self.bias is None:
                out = torch.bmm(rows, blocks)
            else:
                out = torch.baddbmm(self.bias.view(self.parts, 1, -1), rows, blocks)
            return out.transpose(0, 1).reshape(*x.shape[:-1], self.out_features)

        def _weight_first(self, flat: Any) -> Any:
            """``W @ x.T`` per block: each output a dot product along a weight row."""
            columns = flat.T.unsqueeze(0).expand(self.parts, -1, -1)
            blocks = self.weight.view(self.parts, -1, self.in_features)
            if self.bias is None:
                out = torch.bmm(blocks, columns)
            else:
                out = torch.baddbmm(self.bias.view(self.parts, -1, 1), blocks, columns)
            return out.reshape(self.out_features, -1).T

        def extra_repr(self) -> str:
            sizes = f"in_features={self.in_features}, out_features={self.out_features}"
            return f"{sizes}, parts={self.parts}"

    return SplitLinear
