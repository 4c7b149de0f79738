"""The one exception tree of ctxproto.

Usage errors (the caller asked for something invalid) are kept apart from runtime
failures (something outside the caller's control broke), as httpx and pydantic-ai do::

    CtxprotoError
    ├── ConfigError            invalid pipeline config or request: file, key, expected
    ├── BudgetError            pinned content alone exceeds the token budget
    ├── ModelNotAvailableError a model or optional extra is missing: names what to install
    ├── StoreError             a persistent store is unreadable, mismatched or corrupt
    ├── BackendError           the LLM backend failed (HTTP error, refused connection, bad input)
    └── DatasetError           an evaluation dataset cannot be read

The CLI turns ``ConfigError`` into exit code 2 with the message on stderr and no
traceback.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BudgetError",
    "ConfigError",
    "CtxprotoError",
    "DatasetError",
    "ModelNotAvailableError",
    "StoreError",
]


class CtxprotoError(Exception):
    """Base class of every error ctxproto raises on purpose."""


class ConfigError(CtxprotoError, ValueError):
    """A pipeline config, stage parameter or request is invalid.

    ``file``, ``key`` and ``expected`` are kept as attributes so that tools can point
    at the offending spot; ``str()`` renders all three for people.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.expected = expected
        self.detail = message
        parts = []
        if file:
            parts.append(file)
        if key:
            parts.append(f"key '{key}'")
        location = ": ".join(parts)
        text = f"{location}: {message}" if location else message
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class BudgetError(CtxprotoError, ValueError):
    """Pinned content alone does not fit the token budget."""

    def __init__(self, message: str, *, overflow_tokens: int) -> None:
        self.overflow_tokens = overflow_tokens
        super().__init__(message)


class ModelNotAvailableError(CtxprotoError, ImportError):
    """A model file or an optional dependency is missing; the message names the fix."""


class StoreError(CtxprotoError):
    """A persistent store cannot be used as asked (mismatch, corruption, bad input)."""


class BackendError(CtxprotoError):
    """The LLM backend failed to produce an answer."""


class DatasetError(CtxprotoError):
    """An evaluation dataset is missing or unreadable."""
