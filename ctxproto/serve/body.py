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
from ctxproto.serve.metrics import CLIENT_CLOSED_REQUEST
from ctxproto.serve.protocol import ChatCompletionRequest

__all__ = [
    "parse_body",
    "parse_chat_request",
    "read_body",
    "read_json_body",
    "unpaired_surrogate",
    "utf8_text",
]

WireModel = TypeVar("WireModel", bound=BaseModel)
# A JSON escape of half a UTF-16 surrogate pair (``unpaired_surrogate``).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")


async def read_json_body(request: Request, limits: LimitsConfig) -> dict[str, Any]:
    """The body as a JSON object, or an ``APIError`` with the status to answer."""
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media_type.lower() not in ("application/json", ""):
        raise APIError(
            415,
            f"the body must be application/json, not {media_type}",
            code="unsupported_media_type",
        )
    raw = await read_body(request, limits)
    try:
        body = json.loads(utf8_text(raw), parse_constant=_not_json)
    except RecursionError:
        raise APIError(400, "the JSON body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    path = unpaired_surrogate(raw, body)
    if path is not None:
        where = f"'{path}'" if path else "a key of the body"
        raise APIError(
            400,
            f"{where} is not Unicode text: it holds an unpaired surrogate escape",
            code="invalid_value",
            param=path or None,
        )
    return body


async def read_body(request: Request, limits: LimitsConfig) -> bytearray:
    """The whole body, within ``max_body_bytes`` (413) and ``read_timeout_s`` (408).

    A client that leaves mid-upload is a 499. The ``/mcp`` endpoint reads its
    bodies here too, before the MCP transport sees them, so a stalled upload is
    bounded there as on the proxy's routes.
    """
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
            499, "the client left before its body arrived", code=CLIENT_CLOSED_REQUEST
        ) from None
    return raw


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


def utf8_text(raw: bytes | bytearray) -> str:
    """``raw`` read as UTF-8 (a leading byte order mark allowed), as JSON between
    systems must be (RFC 8259); else a ``ValueError`` saying where it is not.

    Given bytes, Python's ``json`` also reads UTF-16 and UTF-32, and lets half a
    surrogate pair through as raw bytes: text no UTF-8 encoder takes, which then
    failed the request as a 500 after the upstream ran. Strict UTF-8 refuses both,
    so an escape (``unpaired_surrogate``) is the only way left to write one.
    """
    try:
        return bytes(raw).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _not_json(constant: str) -> float:
    """``NaN`` and ``Infinity``, which Python's ``json`` reads but JSON has not: the
    body would be forwarded as JSON no upstream reads (a 500, not the client's 400)."""
    raise ValueError(f"{constant} is not a JSON value")


def unpaired_surrogate(raw: bytes | bytearray | str, data: Any) -> str | None:
    """Where ``data``, parsed from the JSON text ``raw``, holds half a UTF-16 surrogate pair.

    The path of that string (``messages[0].content``; ``""`` for a key of the top
    object), or ``None`` when every string is text. JSON's syntax lets an escape
    (``"\\ud800"``) name half a pair and Python's ``json`` reads it, but no UTF-8
    encoder takes it: passed on, it fails later (forwarding it, storing it, sending
    it back) as a 500, after the upstream ran. Only an escape can write one in UTF-8
    JSON (``utf8_text`` refuses the rest), so ``data`` is walked only when ``raw``
    holds such an escape.
    """
    found = (
        _SURROGATE_ESCAPE_TEXT.search(raw)
        if isinstance(raw, str)
        else _SURROGATE_ESCAPE.search(raw)
    )
    if found is None:
        return None
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and not _is_unicode(value):
            return path
        if isinstance(value, dict):
            if not all(_is_unicode(key) for key in value):
                return path  # named by the object holding it: the key itself cannot be shown
            stack.extend((f"{path}.{key}" if path else key, item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
    return None


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
