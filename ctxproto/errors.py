"""The one exception tree of ctxproto.

Usage errors (the caller asked for something invalid: fix the input and try
again) are kept apart from operational failures (something outside the caller's
control broke: a retry, a fix to the environment, or a report may help), as httpx
and pydantic-ai do::

    CtxprotoError
    ├── UsageError                 the caller's input is invalid; the CLI exits 2
    │   ├── ConfigError            config, argument or request: file, key, expected
    │   └── DatasetError           an evaluation dataset is missing or unreadable
    └── OperationalError           the operation failed; the CLI exits 1
        ├── BudgetError            pinned content alone exceeds the token budget
        ├── ModelNotAvailableError a model or optional extra is missing: names the fix
        ├── StoreError             a persistent store is unreadable, mismatched or corrupt
        │   └── StoreUnavailableError    unreachable or no answer in time: server down
        └── BackendError           the LLM backend failed to produce an answer
            ├── BackendTimeoutError      no answer within the timeout (retry may help)
            ├── BackendUnavailableError  refused connection, unknown host: server down
            └── UpstreamStatusError      the server answered an HTTP error status

Catch ``UsageError`` to report bad input to the person who gave it, and
``OperationalError`` (or one of its branches) to retry, fall back or alert. A
retry may help a ``StoreUnavailableError`` (the store's server is down,
restarting or frozen), not another ``StoreError`` (a mismatched, corrupt or
refused store fails the same way again): the proxy answers the first 503 with
``retry-after``, which load balancers and OpenAI clients retry, the second 500. A
``DatasetError`` is a usage error because the dataset is named by the caller:
the fix is to point at a readable file, not to retry.

Validators inside pydantic models raise ``ValueError``, as pydantic requires;
the readers of config files, requests and datasets turn the resulting
``ValidationError`` into a ``ConfigError`` or ``DatasetError`` naming the file and
the key. ``UsageError`` itself is raised for misuse of the Python API that no
config or argument causes (unlocking a cache node that was never locked).

Compatibility: ``ConfigError`` and ``BudgetError`` are also ``ValueError`` and
``ModelNotAvailableError`` is an ``ImportError``, so code written against the
built-in types before this tree existed keeps catching them.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BudgetError",
    "ConfigError",
    "CtxprotoError",
    "DatasetError",
    "ModelNotAvailableError",
    "OperationalError",
    "StoreError",
    "StoreUnavailableError",
    "UpstreamStatusError",
    "UsageError",
]


class CtxprotoError(Exception):
    """Base class of every error ctxproto raises on purpose."""


class UsageError(CtxprotoError):
    """The caller asked for something invalid; retrying the same call fails the same way."""


class OperationalError(CtxprotoError):
    """A valid request failed for a reason outside the caller's input."""


class ConfigError(UsageError, ValueError):
    """A pipeline config, stage parameter, command-line argument or request is invalid.

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


class DatasetError(UsageError):
    """An evaluation dataset is missing, unknown or has no valid item."""


class BudgetError(OperationalError, ValueError):
    """Pinned content alone does not fit the token budget."""

    def __init__(self, message: str, *, overflow_tokens: int) -> None:
        self.overflow_tokens = overflow_tokens
        super().__init__(message)


class ModelNotAvailableError(OperationalError, ImportError):
    """A model file or an optional dependency is missing; the message names the fix."""


class StoreError(OperationalError):
    """A persistent store cannot be used as asked (mismatch, corruption, unreadable file)."""


class StoreUnavailableError(StoreError):
    """A store's server cannot be reached or did not answer in time: connection refused
    or reset, a timeout, a pool with no connection to lend. The same call may succeed
    once the server is back, which no other ``StoreError`` promises."""


class BackendError(OperationalError):
    """The LLM backend failed to produce an answer."""


class BackendTimeoutError(BackendError):
    """The backend did not answer, or stopped streaming, within the timeout."""


class BackendUnavailableError(BackendError):
    """The backend cannot be reached: connection refused, unknown host, network down."""


class UpstreamStatusError(BackendError):
    """The backend answered with an HTTP error status that retries did not clear.

    ``status_code`` lets callers tell a rate limit (429) or an overloaded server
    (503) from a server bug (500); ``upstream_message`` is the server's own text.
    """

    def __init__(self, message: str, *, status_code: int, upstream_message: str) -> None:
        self.status_code = status_code
        self.upstream_message = upstream_message
        super().__init__(message)
