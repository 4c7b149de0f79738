"""Llama decoder layers whose work around the attention runs in two C++ calls.

After the products moved to the GGUF blocks (``packed_linear``), a CPU decode step
of SmolLM2-135M at a 1.8k-token context spent about a third of its 18.5 ms neither
multiplying nor attending but calling: some 45 operators per layer (two RMS
norms, seven products, the rotary embedding, SiLU, two residual sums, views),
each from Python through transformers' modules, 30 layers a step. A
``FusedDecoderLayer`` does the same arithmetic in C++ (``csrc/decoder_layer.cpp``):
one call from the input norm to the rotary embedding, one from the output
product to the MLP's residual sum, with the q, k and v products as one product
over their stacked blocks and the gate and up products as another. The cache
update and the attention stay in Python between the two, as transformers calls
them. Each output of a product is the same dot product in the same order however
many rows are stacked; each norm's mean and SiLU are torch's own operators; every
other step is one IEEE operation per element, rounded alone as torch's kernels
round it. So the layer's output is the same bits
(``tests/models/test_fused_decoder.py`` compares them).

A layer is fused when its seven products are Q4_1-packed, and runs fused for up
to ``PACKED_ROWS`` float32 rows (a decode step, a verifying forward, a short
prefill); longer inputs go through the layer it wraps, unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

from ctxproto._extras import require
from ctxproto.models.packed_linear import PACKED_ROWS

__all__ = ["fuse_decoder_layers"]

_ATTENTION = ("q_proj", "k_proj", "v_proj")
_MLP = ("gate_proj", "up_proj")
_SILU = ("SiLUActivation", "SiLU")
"""transformers' and torch's SiLU modules: both call ``torch.nn.functional.silu``."""


def fuse_decoder_layers(model: Any) -> int:
    """Fuse, in place, each decoder layer of ``model`` whose products are all Q4_1-packed.

    Returns how many layers were fused (0 for a model that is not Llama-shaped).
    The caller owns ``model``: the engine's copy, never the loaded model.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        return 0
    fused_class = _fused_layer()
    fused = 0
    for index, layer in enumerate(layers):
        blocks = _stacked_blocks(layer)
        if blocks is not None:
            layers[index] = fused_class(layer, *blocks)
            fused += 1
    return fused


def _stacked_blocks(layer: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """The q, k, v blocks stacked, and the gate and up blocks stacked; None if the
    layer is not a Llama decoder layer over Q4_1-packed products."""
    torch = require("torch", extra="runtime")
    attention = getattr(layer, "self_attn", None)
    mlp = getattr(layer, "mlp", None)
    if attention is None or mlp is None or not hasattr(layer, "post_attention_layernorm"):
        return None
    products: list[Any] = [getattr(attention, n, None) for n in (*_ATTENTION, "o_proj")]
    products += [getattr(mlp, n, None) for n in (*_MLP, "down_proj")]
    if not all(getattr(p, "format", None) == "q4_1" and p.bias is None for p in products):
        return None
    if type(getattr(mlp, "act_fn", None)).__name__ not in _SILU:
        return None

    def stacked(modules: list[Any]) -> tuple[Any, ...]:
        return tuple(torch.cat([getattr(p, n) for p in modules]) for n in ("qs", "d", "m"))

    return stacked(products[:3]), stacked(products[4:6])


@functools.cache
def _fused_layer() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class FusedDecoderLayer(module):  # type: ignore[misc]
        """A Llama decoder layer with its work around the attention in two C++ calls.

        ``layer`` is the decoder layer it wraps: its norms, products, attention
        module and cache index, and its forward for inputs the calls do not take.
        """

        def __init__(self, layer: Any, qkv: tuple[Any, ...], gate_up: tuple[Any, ...]) -> None:
            super().__init__()
            self.layer = layer
            for prefix, blocks in (("qkv", qkv), ("gate_up", gate_up)):
                for name, tensor in zip(("qs", "d", "m"), blocks, strict=True):
                    self.register_buffer(f"{prefix}_{name}", tensor, persistent=False)
            self.train(layer.training)  # a new module starts in training mode
            attention, mlp = layer.self_attn, layer.mlp
            before, after = layer.input_layernorm, layer.post_attention_layernorm
            o_proj, down_proj = attention.o_proj, mlp.down_proj
            # The calls' arguments, gathered once: read through nn.Module's attribute
            # lookup on every layer of every step, they cost a tenth of the step.
            self._attention_inputs = (before.weight, before.variance_epsilon, *qkv)
            self._sizes = (
                attention.q_proj.out_features,
                attention.k_proj.out_features,
                attention.head_dim,
            )
            self._output = (
                o_proj.qs,
                o_proj.d,
                o_proj.m,
                after.weight,
                after.variance_epsilon,
                *gate_up,
                down_proj.qs,
                down_proj.d,
                down_proj.m,
            )
            self._attend: Any = None

        def __getattr__(self, name: str) -> Any:
            """The wrapped layer's modules and settings (``self_attn``, ``mlp``, the
            norms) read through, as code written for a Llama layer expects."""
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(super().__getattr__("layer"), name)

        def forward(
            self,
            hidden_states: Any,
            attention_mask: Any = None,
            position_ids: Any = None,
            cache: Any = None,
            use_cache: bool | None = False,
            position_embeddings: Any = None,
            **kwargs: Any,
        ) -> Any:
            rows = hidden_states.shape[0] * hidden_states.shape[1]
            if (
                rows > PACKED_ROWS
                or self.training
                or hidden_states.dtype != torch.float32
                or position_embeddings is None
            ):
                return self.layer(
                    hidden_states,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    cache=cache,
                    use_cache=use_cache,
                    position_embeddings=position_embeddings,
                    **kwargs,
                )
            attention = self.layer.self_attn
            cos, sin = position_embeddings
            query, key, value = torch.ops.ctxproto.decoder_attention_inputs(
                hidden_states, *self._attention_inputs, cos, sin, *self._sizes
            )
            if cache is not None:
                key, value = cache.update(key, value, attention.layer_idx, kwargs=kwargs)
            if self._attend is None:
                self._attend = _attention_function(attention.config._attn_implementation)
            output, _ = self._attend(
                attention,
                query,
                key,
                value,
                attention_mask,
                dropout=0.0,
                scaling=attention.scaling,
                **kwargs,
            )
            return torch.ops.ctxproto.decoder_output(output, hidden_states, *self._output)

    return FusedDecoderLayer


def _attention_function(name: str) -> Any:
    """The attention function transformers' ``LlamaAttention`` would call for ``name``."""
    modeling: Any = require("transformers.modeling_utils", extra="runtime")
    llama: Any = require("transformers.models.llama.modeling_llama", extra="runtime")
    return modeling.ALL_ATTENTION_FUNCTIONS.get_interface(name, llama.eager_attention_forward)
