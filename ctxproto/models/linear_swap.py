"""Engine-side copies of a loaded model with its ``nn.Linear`` layers replaced.

The runtime multiplies by the weights its own way (split over the cores, or with
int8 weights), but the loaded model is shared per process: the benchmarks' plain
``generate`` baseline and other engines hold it too. So the runtime gets a shallow
copy of the module tree that shares every tensor it does not replace, and only the
copy's layers change. The one place that makes that copy lives here, so every kind
of replacement shares the same rules (what is shared, when nothing changes).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ctxproto._extras import require

__all__ = ["swap_linear_layers"]


def swap_linear_layers(
    model: Any, replace: Callable[[str, Any], Any | None], *, in_place: bool = False
) -> Any:
    """``model`` with each ``nn.Linear`` for which ``replace`` returns a module swapped for it.

    ``replace`` gets the layer's qualified name (``model.layers.0.mlp.up_proj``) and
    the layer, and returns its replacement, or ``None`` to keep it.
    Without ``in_place`` the swap happens on a copy that shares every parameter and
    buffer with ``model``. Returns ``model`` itself when nothing was replaced.
    """
    torch = require("torch", extra="runtime")
    twin = model
    if not in_place:
        shared = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]}
        twin = copy.deepcopy(model, shared)
    replaced = 0
    for prefix, parent in list(twin.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                replacement = replace(f"{prefix}.{name}" if prefix else name, child)
                if replacement is not None:
                    setattr(parent, name, replacement)
                    replaced += 1
    return twin if replaced else model
