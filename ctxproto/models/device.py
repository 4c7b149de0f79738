"""Device selection: one rule for every model ctxproto loads."""

from __future__ import annotations

from ctxproto._extras import require

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """``"auto"`` means the GPU when torch sees one, else the CPU."""
    if device != "auto":
        return device
    torch = require("torch", extra="runtime")
    return "cuda" if torch.cuda.is_available() else "cpu"
