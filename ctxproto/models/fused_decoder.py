"""Llama decoder layers whose work around the attention runs in two C++ calls.

After the products moved to the GGUF blocks (``packed_linear``), a CPU decode step
of SmolLM2-135M at a 1.8k-token context spent about a third of its 19.3 ms neither
multiplying nor attending but calling: some 45 operators per layer (two RMS
norms, seven products, the rotary embedding, SiLU, two residual sums, views),
each from Python through transformers' modules, 30 layers a step. A
``FusedDecoderLayer`` does the same arithmetic in C++ (``csrc/decoder_layer.cpp``):
one call from the input norm to the rotary embedding, one from the output
product to the MLP's residual sum, with the q, k and v products as one product
over their stacked blocks and the gate and up products as another. The cache
update and the attention stay in Python between the two, as transformers calls
them. Each output of a product is the same dot product in the same order however
many rows are stacked; each norm's mean and SiLU are torch's own operators on the
tensors transformers gives them; every other step is one IEEE operation per
element, rounded alone as torch's kernels round it. So the layer's output is the
same bits (``tests/models/test_fused_decoder.py`` compares them).

Only transformers' own Llama layer is fused (by class, not by attribute names:
Qwen3's q/k norms, Granite's residual multiplier or SmolLM3's layers without
rotary look alike from outside and compute something else), when its seven
products are Q4_1-packed. It runs fused for up to ``packed_rows()`` float32 rows
on the CPU under inference (a decode step, a verifying forward, a short
prefill); longer inputs, gradients, and a forward whose hidden states or
attention weights transformers is collecting go through the layer it wraps,
unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

from ctxproto._extras import require
from ctxproto.models.packed_linear import packed_rows

__all__ = ["fuse_decoder_layers", "fused_rows"]

_LLAMA_LAYER = "LlamaDecoderLayer"
_LLAMA_PARTS = {
    "self_attn": "LlamaAttention",
    "mlp": "LlamaMLP",
    "input_layernorm": "LlamaRMSNorm",
    "post_attention_layernorm": "LlamaRMSNorm",
}
"""transformers' Llama modules, whose forward the C++ calls reproduce."""
_SILU = ("SiLUActivation", "SiLU")
"""transformers' and torch's SiLU modules: both call ``torch.nn.functional.silu``."""


def fuse_decoder_layers(model: Any) -> int:
    """Fuse, in place, each Llama decoder layer of ``model`` whose products are Q4_1-packed.

    Returns how many layers were fused (0 for any other model). The caller owns
    ``model``: the engine's copy, never the loaded model. Layers already fused
    are left as they are.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        return 0
    fused_class = _fused_layer()
    fused = 0
    for index, layer in enumerate(layers):
        blocks = _stacked_blocks(layer)  # None for a layer fused before: not a Llama class
        if blocks is not None:
            layers[index] = fused_class(layer, *blocks)
            fused += 1
    return fused


def fused_rows(model: Any) -> int | None:
    """The most rows a forward of ``model`` runs through its fused layers; None when
    none of its layers is fused.

    A longer prefill is faster cut into pieces of this size than run whole: the
    whole one goes through the wrapped layers' float32 products and torch's
    attention, the pieces through the packed kernels (``docs/runtime.md``,
    "Prefill in pieces").
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    first = next(model.parameters(), None)
    if layers is None or first is None or first.device.type != "cpu":
        return None
    if not any(isinstance(layer, _fused_layer()) for layer in layers):
        return None
    return packed_rows()


def _stacked_blocks(layer: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """The q, k and v blocks stacked, and the gate and up blocks stacked; None unless
    ``layer`` is transformers' Llama decoder layer over Q4_1-packed products."""
    torch = require("torch", extra="runtime")
    if type(layer).__name__ != _LLAMA_LAYER or any(
        type(getattr(layer, name, None)).__name__ != part for name, part in _LLAMA_PARTS.items()
    ):
        return None
    attention, mlp = layer.self_attn, layer.mlp
    if type(getattr(mlp, "act_fn", None)).__name__ not in _SILU:
        return None
    qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
    gate_up = [mlp.gate_proj, mlp.up_proj]
    products = [*qkv, attention.o_proj, *gate_up, mlp.down_proj]
    if not all(getattr(p, "format", None) == "q4_1" and p.bias is None for p in products):
        return None

    def stacked(modules: list[Any]) -> tuple[Any, ...]:
        return tuple(torch.cat([getattr(p, n) for p in modules]) for n in ("qs", "d", "m"))

    return stacked(qkv), stacked(gate_up)


@functools.cache
def _fused_layer() -> type[Any]:
    torch = require("torch", extra="runtime")
    module: Any = torch.nn.Module

    class FusedDecoderLayer(module):  # type: ignore[misc]
        """A Llama decoder layer with its work around the attention in two C++ calls.

        ``layer`` is the decoder layer it wraps: its norms, products, attention
        module and cache index, and its forward for inputs the calls do not take.
        The stacked q/k/v and gate/up blocks are its own buffers.
        """

        def __init__(self, layer: Any, qkv: tuple[Any, ...], gate_up: tuple[Any, ...]) -> None:
            super().__init__()
            self.layer = layer
            for prefix, blocks in (("qkv", qkv), ("gate_up", gate_up)):
                for name, tensor in zip(("qs", "d", "m"), blocks, strict=True):
                    self.register_buffer(f"{prefix}_{name}", tensor, persistent=False)
            self.train(layer.training)  # a new module starts in training mode
            attention = layer.self_attn
            self.sizes = (
                attention.q_proj.out_features,
                attention.k_proj.out_features,
                attention.head_dim,
            )
            # The attention function transformers would pick, looked up again when
            # the model's attention implementation changes.
            self._attend: tuple[str, Any] = ("", None)

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
            """``LlamaDecoderLayer.forward``; fused when the calls take the input."""
            layer = self.layer
            if not self._fusable(hidden_states, position_embeddings):
                return layer(
                    hidden_states,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    cache=cache,
                    use_cache=use_cache,
                    position_embeddings=position_embeddings,
                    **kwargs,
                )
            attention, before, after = (
                layer.self_attn,
                layer.input_layernorm,
                layer.post_attention_layernorm,
            )
            # What transformers' LlamaAttention hands its cache and attention function.
            passed = {"position_ids": position_ids, "use_cache": use_cache, **kwargs}
            cos, sin = position_embeddings
            query, key, value = torch.ops.ctxproto.decoder_attention_inputs(
                hidden_states,
                before.weight,
                before.variance_epsilon,
                self.qkv_qs,
                self.qkv_d,
                self.qkv_m,
                cos,
                sin,
                *self.sizes,
            )
            if cache is not None:
                key, value = cache.update(key, value, attention.layer_idx, kwargs=passed)
            output, _ = self._attention(attention.config._attn_implementation)(
                attention,
                query,
                key,
                value,
                attention_mask,
                dropout=0.0,
                scaling=attention.scaling,
                **passed,
            )
            o_proj, down_proj = attention.o_proj, layer.mlp.down_proj
            return torch.ops.ctxproto.decoder_output(
                output,
                hidden_states,
                o_proj.qs,
                o_proj.d,
                o_proj.m,
                after.weight,
                after.variance_epsilon,
                self.gate_up_qs,
                self.gate_up_d,
                self.gate_up_m,
                down_proj.qs,
                down_proj.d,
                down_proj.m,
            )

        def _fusable(self, hidden_states: Any, position_embeddings: Any) -> bool:
            """Inputs the calls reproduce the wrapped layer on, with nothing to record.

            The calls have no gradient, take float32 rows on the CPU up to what the
            packed kernel multiplies, and call neither the layer nor its attention
            module, whose forward hooks are how transformers collects hidden states
            and attention weights.
            """
            return bool(
                hidden_states.shape[0] * hidden_states.shape[1] <= packed_rows()
                and hidden_states.dtype == torch.float32
                and hidden_states.device.type == "cpu"
                and position_embeddings is not None
                and not self.training
                and not torch.is_grad_enabled()
                and not _collecting_outputs()
            )

        def _attention(self, implementation: str) -> Any:
            name, function = self._attend
            if name != implementation or function is None:
                function = _attention_function(implementation)
                self._attend = (implementation, function)
            return function

    return FusedDecoderLayer


def _attention_function(name: str) -> Any:
    """The attention function transformers' ``LlamaAttention`` would call for ``name``."""
    modeling: Any = require("transformers.modeling_utils", extra="runtime")
    llama: Any = require("transformers.models.llama.modeling_llama", extra="runtime")
    return modeling.ALL_ATTENTION_FUNCTIONS.get_interface(name, llama.eager_attention_forward)


@functools.cache
def _output_collector() -> Any:
    """transformers' context variable of the outputs a forward is collecting, or None
    where this version of transformers collects them another way."""
    try:
        capturing: Any = require("transformers.utils.output_capturing", extra="runtime")
    except ImportError:
        return None
    return getattr(capturing, "_active_collector", None)


def _collecting_outputs() -> bool:
    collector = _output_collector()
    collected = collector.get() if collector is not None else None
    return bool(collected)
