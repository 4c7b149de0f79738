"""Linear layers that spread each small matrix product over every CPU core.

A decode step multiplies one row per request by every weight matrix of the model:
a matrix-vector product, bound by how fast the weights stream from memory. On CPU,
``torch.nn.functional.linear`` runs such products on one core (on our 2-core machine
it ran as fast with one thread as with two), so the weights stream at one core's
speed. Splitting each weight by output rows into one block per core and multiplying
the blocks as one ``bmm`` batch puts every core on its own block: the SmolLM2-135M
decode step at a 1.8k-token context drops from 67 ms to 51 ms (``ctxproto bench
decode``, docs/runtime.md). Every output element is still the same dot product over
the same weights, so greedy answers do not change.

The runtime's engine gets a shallow copy that shares every weight tensor with the
loaded model, so code holding the original (the benchmarks' plain ``generate``
baseline) keeps transformers' own layers; the embedder, which owns its model, is
split in place.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from ctxproto._extras import require

__all__ = ["split_over_cores"]


def split_over_cores(model: Any, parts: int | None = None, *, in_place: bool = False) -> Any:
    """``model`` with its linear layers split over ``parts`` cores (default: torch's threads).

    Without ``in_place``, a copy of the module tree sharing the weights is split and
    returned. Returns ``model`` itself on CUDA, with one thread, or when nothing
    divides evenly.
    """
    torch = require("torch", extra="runtime")
    parts = parts or torch.get_num_threads()
    if parts < 2 or next(model.parameters()).device.type != "cpu":
        return model
    layer_class = _split_linear()
    twin = model
    if not in_place:
        shared = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]}
        twin = copy.deepcopy(model, shared)
    replaced = 0
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child.out_features % parts == 0:
                setattr(parent, name, layer_class(child, parts))
                replaced += 1
    return twin if replaced else model


@functools.cache
def _split_linear() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class SplitLinear(module):  # type: ignore[misc]
        """``linear`` as a ``bmm`` over ``parts`` row blocks of the same weight tensor."""

        def __init__(self, linear: Any, parts: int) -> None:
            super().__init__()
            self.weight = linear.weight
            self.bias = linear.bias
            self.parts = parts
            out_features, in_features = linear.weight.shape
            # [parts, in, out/parts]: a view, no copy of the weights.
            self._blocks = linear.weight.view(parts, out_features // parts, in_features).mT

        def forward(self, x: Any) -> Any:
            in_features = x.shape[-1]
            rows = x.reshape(1, -1, in_features).expand(self.parts, -1, in_features)
            out = torch.bmm(rows, self._blocks).transpose(0, 1)
            out = out.reshape(*x.shape[:-1], self.weight.shape[0])
            return out if self.bias is None else out + self.bias

    return SplitLinear
