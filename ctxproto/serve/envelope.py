"""Every error the server answers, in the OpenAI envelope, from this one place.

``APIError`` is what the serving layer raises for a request it refuses (401,
404, 413, 415, 429) or an upstream failure it passes on (its status kept, or
502/504); ``error_response`` turns it, or any ctxproto error, into the JSON
body ``{"error": {"message", "type", "param", "code"}}`` with ``code`` a string,
and sets ``x-should-retry`` so clients do not retry what a retry cannot fix.

A store that is down or not answering (``StoreUnavailableError``) is a 503 with
``retry-after``, which load balancers and OpenAI clients retry; any other
``StoreError`` (a corrupt or mismatched store, data it refused) a 500.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from ctxproto.errors import (
    BackendError,
    BudgetError,
    ConfigError,
    CtxprotoError,
    StoreError,
    StoreUnavailableError,
)
from ctxproto.serve.protocol import ErrorInfo, ErrorResponse
from ctxproto.serve.request_id import note_error

__all__ = ["APIError", "error_payload", "error_response", "to_api_error"]

_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
_STORE_RETRY_AFTER_S = 1.0
"""The ``retry-after`` of a store that did not answer, as of a tenant at its limit: a
store's restart or failover takes seconds, over which a client's retries spread."""
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(BackendError):
    """A request refused, or an upstream failure, with the HTTP status to answer.

    A ``BackendError`` because most of them come from the upstream; the ones the
    server raises itself (bad key, unknown model) are answered before any backend
    runs and never escape the app.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after

    @property
    def type(self) -> str:
        return _TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )


def to_api_error(exc: CtxprotoError) -> APIError:
    """The status and code a ctxproto error is answered with."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ConfigError):
        return APIError(400, str(exc), code="invalid_value", param=exc.key)
    if isinstance(exc, BudgetError):
        return APIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, BackendError):
        return APIError(502, f"upstream failed: {exc}", code="upstream_error")
    if isinstance(exc, StoreUnavailableError):
        return APIError(
            503,
            f"a store is unavailable: {exc}",
            code="store_unavailable",
            retry_after=_STORE_RETRY_AFTER_S,
        )
    if isinstance(exc, StoreError):
        return APIError(500, f"a store failed: {exc}", code="store_error")
    return APIError(500, str(exc), code="internal_error")


def error_payload(error: APIError) -> ErrorResponse:
    info = ErrorInfo(message=error.message, type=error.type, param=error.param, code=error.code)
    return ErrorResponse(error=info)


def error_response(exc: CtxprotoError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error's answer; it is noted for the request's log line (``request_id``)."""
    error = to_api_error(exc)
    note_error(error.status, error.code, error.message)
    out = dict(headers or {})
    out["x-should-retry"] = "true" if error.status in _RETRYABLE else "false"
    if error.retry_after is not None:
        out["retry-after"] = str(max(int(error.retry_after + 0.999), 0))
    return JSONResponse(error_payload(error).model_dump(), status_code=error.status, headers=out)
