"""Reading a request body safely: JSON only, bounded in size and in time, then validated.

Everything that can be refused is refused before any model or tokenizer runs:
a non-JSON content type (415), a declared or actual size over the limit (413,
counted while reading, so a chunked or lying body never gets past it), a client
that stalls (408) or leaves (499, answered to no one), malformed or absurdly
nested JSON and wrong field types (400 naming the field).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from ctxproto.config import validation_error_to_config_error
from ctxproto.serve.config import LimitsConfig
from ctxproto.serve.envelope import APIError
from ctxproto.serve.protocol import ChatCompletionRequest

__all__ = ["parse_body", "parse_chat_request", "read_json_body"]

WireModel = TypeVar("WireModel", bound=BaseModel)
# Where a string may hold half a surrogate pair: only an escape can write one in
# UTF-8 JSON, so bodies without such an escape are never walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_json_body(request: Request, limits: LimitsConfig) -> dict[str, Any]:
    """The body as a JSON object, or an ``APIError`` with the status to answer."""
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media_type.lower() not in ("application/json", ""):
        raise APIError(
            415,
            f"the body must be application/json, not {media_type}",
            code="unsupported_media_type",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _too_large(limits)
    raw = bytearray()
    try:
        with anyio.fail_after(limits.read_timeout_s):
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > limits.max_body_bytes:
                    raise _too_large(limits)
    except TimeoutError:
        raise APIError(
            408,
            f"the body did not arrive within {limits.read_timeout_s:g} s",
            code="request_timeout",
        ) from None
    except ClientDisconnect:
        # The client's doing, not the server's: no 500 logged with a traceback and
        # counted as an internal error for every client that gives up mid-upload.
        raise APIError(
            499, "the client left before its body arrived", code="client_closed_request"
        ) from None
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except RecursionError:
        raise APIError(400, "the JSON body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    if _SURROGATE_ESCAPE.search(raw):
        _refuse_unpaired_surrogates(body)
    return body


def parse_chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    """Validate a chat-completions body; the first wrong field names the 400."""
    return parse_body(ChatCompletionRequest, body)


def parse_body(model: type[WireModel], body: dict[str, Any]) -> WireModel:
    """Validate a JSON body as ``model``; the first wrong field names the 400."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = validation_error_to_config_error(exc, data=body)
        raise APIError(
            400, f"invalid request: {error}", code="invalid_value", param=error.key
        ) from None
    except RecursionError:
        raise APIError(400, "the JSON body is nested too deeply", code="invalid_json") from None


def _not_json(constant: str) -> float:
    """``NaN`` and ``Infinity``, which Python's ``json`` reads but JSON has not: the
    body would be forwarded as JSON no upstream reads (a 500, not the client's 400)."""
    raise ValueError(f"{constant} is not a JSON value")


def _refuse_unpaired_surrogates(body: dict[str, Any]) -> None:
    """A 400 naming a string that holds half a UTF-16 surrogate pair (``"\\ud800"``).

    JSON's syntax lets an escape name one, and Python's ``json`` reads it, but it
    is no Unicode text: no UTF-8 encoder takes it, so the request failed later, as
    a 500 from the upstream client's encoder or a store's, after the upstream ran.
    """
    stack: list[tuple[str | None, Any]] = [(None, body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            bad = not _is_unicode(value)
        elif isinstance(value, dict):
            bad = not all(_is_unicode(key) for key in value)
            stack.extend((f"{path}.{key}" if path else key, item) for key, item in value.items())
        elif isinstance(value, list):
            bad = False
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
        else:
            bad = False
        if bad:  # a bad key is named by the object holding it: the key itself cannot be shown
            where = f"'{path}'" if path else "a key of the body"
            raise APIError(
                400,
                f"{where} is not Unicode text: it holds an unpaired surrogate escape",
                code="invalid_value",
                param=path,
            )


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _too_large(limits: LimitsConfig) -> APIError:
    return APIError(
        413, f"the body exceeds {limits.max_body_bytes} bytes", code="request_too_large"
    )
