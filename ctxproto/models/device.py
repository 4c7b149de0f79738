"""Device selection: one rule for every model ctxproto loads."""

from __future__ import annotations

from ctxproto._extras import require
from ctxproto.errors import ConfigError

__all__ = ["check_device", "resolve_device"]


def resolve_device(device: str) -> str:
    """``"auto"`` means the GPU when torch sees one, else the CPU; any other device is
    checked (``check_device``), so a stage refuses it before its models load."""
    if device != "auto":
        check_device(device)
        return device
    torch = require("torch", extra="runtime")
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """Refuse, before anything loads, a device torch cannot put a model on.

    A typo (``gpu``) or a GPU this machine lacks (``cuda`` where torch has no CUDA,
    ``cuda:3`` on a one-GPU machine) otherwise surfaced as torch's own ``RuntimeError``
    or ``AssertionError``, after the model had been read.
    """
    torch = require("torch", extra="runtime")
    expected = '"cpu", "cuda" or "cuda:N"'
    try:
        place = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{device!r} is not a device", key="device", expected=expected) from None
    if place.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count <= (place.index or 0):
        raise ConfigError(
            f"{device!r} asks for a GPU that torch does not see here ({count} CUDA devices)",
            key="device",
            expected=expected if count else '"cpu"',
        )
