"""Optional-dependency checks: a missing extra fails at once, naming what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from ctxproto.errors import ModelNotAvailableError

__all__ = ["require"]


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
