"""The local engine's settings as a config file writes them.

A chatbot config's ``backend:`` section and the serve config's local
``upstream:`` both run the bundled ``Engine``; they read its settings from this
one model, so a setting, its default and its description are declared once and
the two files cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ctxproto.runtime.engine import Engine, QuantizeMode
from ctxproto.runtime.radix_cache import Eviction

__all__ = ["EngineSettings"]


class EngineSettings(BaseModel):
    """The ``Engine`` arguments a config file may set; a config section extends it."""

    model_config = ConfigDict(extra="forbid")

    model: str = "default"
    device: str = "cpu"
    prefix_cache: bool = True
    cache_bytes: int | None = Field(default=None, gt=0, description="Prefix-KV cache cap.")
    quantize: QuantizeMode = Field(
        default="auto",
        description="int8 or bf16 weights on CPU (docs/runtime.md); past the LM head, "
        "answers may differ (auto: float32).",
    )
    speculate: bool = Field(
        default=True,
        description="Check tokens drafted from the prompt in one forward pass (same answers).",
    )
    eviction: Eviction = Field(
        default="reuse",
        description="Which cached span makes room: reuse (conversations that come back "
        "stay) or lru (docs/runtime.md).",
    )

    def load_engine(self, **options: Any) -> Engine:
        """The engine these settings describe (this loads the model); ``options`` are
        further ``Engine`` arguments the section has of its own. An unset ``cache_bytes``
        leaves the engine's own default."""
        settings: dict[str, Any] = {
            "device": self.device,
            "prefix_cache": self.prefix_cache,
            "quantize": self.quantize,
            "speculate": self.speculate,
            "eviction": self.eviction,
        }
        if self.cache_bytes is not None:
            settings["cache_bytes"] = self.cache_bytes
        return Engine(self.model, **settings, **options)
