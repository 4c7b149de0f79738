"""Optional-dependency checks: a missing extra fails at once, naming what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from ctxproto.errors import ModelNotAvailableError

__all__ = ["quiet_transformers", "require"]


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise an error that names the extra providing it.

    Heavy libraries (torch, transformers, sentence-transformers, faiss) are imported
    lazily through this function so that ``import ctxproto`` stays light.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"'{module}' is not installed; it comes with the '{extra}' extra: "
            f"pip install 'ctxproto[{extra}]'"
        ) from exc


def quiet_transformers() -> None:
    """No per-tensor progress bars or load chatter from transformers: we show our own progress."""
    transformers = require("transformers", extra="runtime")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
