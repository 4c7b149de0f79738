"""Where the proxy sends assembled requests: the bundled runtime or a remote server.

An ``Upstream`` speaks the chat-completions wire format, not the SDK's
``Backend`` interface, because a proxy must pass through what a backend never
sees (``tools``, ``response_format``, unknown fields) and return tool calls.
``complete`` answers a body; ``stream`` returns the chunks once the upstream
has accepted the request (so a refusal is still a plain JSON error), as an
``UpstreamStream``: closing it ends the upstream request, whether or not a
chunk was read. ``embeddings`` forwards an embeddings body and returns the
answer's bytes as they came; an upstream that serves chat only (the bundled
runtime) refuses it with a 404.

``RemoteUpstream`` retries 429, 5xx and refused connections before the first
byte (exponential backoff, honouring ``Retry-After``) and normalises error
bodies of other shapes (older vLLM's ``{"object": "error", ...}``, FastAPI's
``{"detail": ...}``, plain text) into an ``APIError`` with the status to answer.
It sends the request's id as ``x-request-id``, so the upstream's log names the
same request, and keeps the upstream's own id for the proxy's log line
(``request_id``), never passing it on as the proxy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
from pydantic import ValidationError

from ctxproto.serve.body import unpaired_surrogate, utf8_text
from ctxproto.serve.envelope import APIError
from ctxproto.serve.protocol import ChatCompletionChunk, ChatCompletionResponse
from ctxproto.serve.request_id import (
    REQUEST_ID_HEADER,
    current_request,
    request_log,
    sane_request_id,
)
from ctxproto.stores.store_url import redact_url

__all__ = ["RemoteUpstream", "Upstream", "UpstreamStream", "embeddings_not_served"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,63}/[A-Za-z0-9][\w.+-]{0,63}", re.ASCII)
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 8.0


class UpstreamStream(AsyncIterator[ChatCompletionChunk]):
    """The chunks of one streamed answer; ``aclose`` ends the upstream request they
    come from (closes the HTTP response, cancels the engine's decoding), read or not.

    Not the bare async generator that reads them: closing a generator that never
    started runs none of its body, its ``finally`` included. A stream is closed
    unread when its client hangs up before ``http.response.start`` is sent (ASGI
    2.4's ``send`` raises then; under 2.3 a ``send`` that waits is cancelled
    there), or when the proxy fails between asking the upstream and answering:
    the HTTP response then stayed lent out of the connection pool for good, and
    the engine decoded the whole answer for nobody.
    """

    def __init__(
        self,
        chunks: AsyncGenerator[ChatCompletionChunk, None],
        end: Callable[[], Awaitable[None]],
    ) -> None:
        self._chunks = chunks
        self._end = end

    async def __anext__(self) -> ChatCompletionChunk:
        return await anext(self._chunks)

    async def aclose(self) -> None:
        """Stop reading and end the upstream request; again, a no-op."""
        try:
            await self._chunks.aclose()
        finally:
            await self._end()


class Upstream(ABC):
    """A chat-completions server the proxy forwards to."""

    model: str

    @abstractmethod
    async def complete(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> ChatCompletionResponse:
        """The whole answer to ``body`` (``stream`` is false).

        ``cache_messages`` is how many leading messages the next turn sends again
        (``GenerationParams.cache_messages``): a hint for an upstream that can keep
        less in its prefix cache, which an HTTP server has no field to be told.
        """

    @abstractmethod
    async def stream(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> UpstreamStream:
        """Chunks of the answer, usage last; raises before returning if refused.

        The caller closes the stream however its response ends, read or not.
        """

    @abstractmethod
    async def ready(self) -> str | None:
        """``None`` when requests can be served, else why not."""

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        """The upstream's answer to an embeddings ``body``, its bytes as they came.

        Not abstract: an upstream written before this route (a wrapper, say) refuses,
        as one that serves chat completions only does.
        """
        raise embeddings_not_served("this server's upstream")

    async def aclose(self) -> None:  # noqa: B027 - not every upstream holds anything
        """Release connections and threads."""


def embeddings_not_served(upstream: str) -> APIError:
    """The answer to an embeddings request for ``upstream``, which serves chat only.

    A 404, not a 501: OpenAI's clients raise ``NotFoundError`` for it and never
    retry it, as for a route OpenAI's API does not serve, where a 501 is an
    ``InternalServerError`` that clients without ``x-should-retry`` (other SDKs,
    gateways) retry as a passing failure, and that reads as the server broken.
    """
    return APIError(
        404,
        f"{upstream} serves chat completions only, not embeddings (POST /v1/embeddings): "
        "they need an upstream of type openai, a server that serves them",
        code="embeddings_not_served",
    )


class RemoteUpstream(Upstream):
    """An OpenAI-compatible server over ``httpx``'s async client."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        cache_salt: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url.rstrip("/"))
        # Credentials in the URL (https://user:secret@host/v1, or a token as the user
        # part, https://TOKEN@host/v1) go to the upstream as basic auth, as httpx sent
        # them, but are kept out of the URL: httpx logs each request's URL at INFO,
        # and the errors tenants read quote it, with ***@ where they were.
        auth = httpx.BasicAuth(url.username, url.password) if url.username or url.password else None
        self.base_url = str(url.copy_with(username=None, password=None))
        self._shown_url = redact_url(str(url.copy_with(userinfo=b"***")) if auth else self.base_url)
        self.model = model
        self.retries = retries
        self.cache_salt = cache_salt
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers=headers,
            auth=auth,
            transport=transport,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    async def complete(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> ChatCompletionResponse:
        response = await self._send("/chat/completions", self._body(body, tenant, stream=False))
        try:
            text = utf8_text(await _read(response))
            return ChatCompletionResponse.model_validate(_text_only(text, json.loads(text)))
        except ValueError as exc:
            raise APIError(
                502,
                f"the upstream sent an invalid answer: {_described(exc)}",
                code="bad_upstream_response",
            ) from None
        finally:
            await response.aclose()

    async def stream(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> UpstreamStream:
        response = await self._send("/chat/completions", self._body(body, tenant, stream=True))
        return UpstreamStream(_read_events(response), response.aclose)

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        """The answer passed back unread: its vectors (floats, or base64 as the openai
        client asks by default) are the client's, and parsing megabytes of them here
        would hold the event loop for nothing. ``model`` goes as the client named it:
        ``served_model`` and the upstream's ``model`` name the chat model, and an
        embeddings model is another one, which only the client knows."""
        response = await self._send("/embeddings", body, clients_model=True)
        try:
            answer = await _read(response)
        finally:
            await response.aclose()
        if not _json_object(answer):
            # A login page, a proxy's error page with a 200: passed on as JSON, the
            # client failed to parse it, blaming the proxy's answer.
            raise APIError(
                502,
                f"the upstream sent an answer that is not JSON ({_media_type(response)})",
                code="bad_upstream_response",
            )
        return answer

    async def ready(self) -> str | None:
        """Unready when down, and when it refuses the proxy's key (401, 403): every
        request would then be a 502. A 404 is a server with no ``/models`` route."""
        try:
            response = await self._client.get(
                f"{self.base_url}/models", headers=_request_id_header(), timeout=5.0
            )
        except httpx.HTTPError as exc:
            return f"upstream unreachable: {type(exc).__name__}"
        status = response.status_code
        if status in (401, 403):
            return f"upstream refused the proxy's api_key ({status})"
        return None if status < 500 else f"upstream answered {status}"

    async def aclose(self) -> None:
        await self._client.aclose()

    def _body(self, body: dict[str, Any], tenant: str, *, stream: bool) -> dict[str, Any]:
        out = {**body, "model": self.model, "stream": stream}
        if stream:
            out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            out.pop("stream_options", None)
        if self.cache_salt:
            out["cache_salt"] = f"ctxproto-tenant-{tenant}"  # vLLM: no prefix shared across salts
        return out

    async def _send(
        self, path: str, body: dict[str, Any], *, clients_model: bool = False
    ) -> httpx.Response:
        """POST to ``path`` with retries; returns a response with a 2xx status, its body
        unread. ``clients_model``: the body names the client's model, not the proxy's
        (``_normalise``)."""
        url = f"{self.base_url}{path}"
        shown = f"{self._shown_url}{path}"
        record = current_request()
        headers = _request_id_header()
        if record is not None:
            record.upstream_asked = True
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                request = self._client.build_request("POST", url, json=body, headers=headers)
                response = await self._client.send(request, stream=True)
            except httpx.TimeoutException:
                raise APIError(
                    504, f"the upstream did not answer in time ({shown})", code="upstream_timeout"
                ) from None
            except httpx.TransportError as exc:
                if last:
                    raise APIError(
                        502,
                        f"cannot reach the upstream {shown}: {type(exc).__name__}",
                        code="upstream_unavailable",
                    ) from None
                await asyncio.sleep(_backoff(attempt, None))
                continue
            if record is not None:
                record.upstream_id = sane_request_id(response.headers.get(REQUEST_ID_HEADER))
            if response.status_code < 300:
                return response
            error = await _upstream_error(response, clients_model=clients_model)
            if response.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(_backoff(attempt, error.retry_after))
                continue
            raise error
        raise AssertionError("unreachable: the last attempt returns or raises")


def _request_id_header() -> dict[str, str]:
    """The request's id for the upstream (retries send the same), if one is answered."""
    record = current_request()
    return {REQUEST_ID_HEADER: record.sent_upstream} if record is not None else {}


async def _read_events(response: httpx.Response) -> AsyncGenerator[ChatCompletionChunk, None]:
    """Chunks from a server-sent-events body; an error event becomes an ``APIError``.

    So does a body that ends before ``[DONE]`` and before any finish reason: the
    upstream broke off mid-answer (closing its body cleanly, so no transport
    error tells), and passed on as a whole answer the client would keep half of it.
    The response is closed by the ``UpstreamStream`` these chunks go out in.
    """
    finished = False
    with _body_failures():
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[len("data:") :].strip()
            if payload == "[DONE]":
                return
            data = _text_only(payload, json.loads(payload))
            if isinstance(data, dict) and "error" in data:
                raise _normalise(502, data, None)
            chunk = ChatCompletionChunk.model_validate(data)
            finished = finished or any(c.finish_reason for c in chunk.choices)
            yield chunk
    if not finished:
        raise APIError(
            502, "the upstream's stream ended before its answer did", code="upstream_error"
        )


def _text_only(raw: bytes | str, data: Any) -> Any:
    """``data``, parsed from ``raw``, or a 502 when a string of it is not Unicode text.

    Half a surrogate pair (an emoji split in two by a server that counts UTF-16
    units) failed the proxy's own answer instead: a 500 after the upstream ran,
    or a stream broken off with no error event.
    """
    path = unpaired_surrogate(raw, data)
    if path is not None:
        raise APIError(
            502,
            f"the upstream sent text that is not Unicode (an unpaired surrogate at '{path}')",
            code="bad_upstream_response",
        )
    return data


async def _read(response: httpx.Response) -> bytes:
    """The body of a response whose headers came (see ``_body_failures``)."""
    with _body_failures():
        return await response.aread()


@contextlib.contextmanager
def _body_failures() -> Iterator[None]:
    """An upstream that stalls or breaks off after its headers, whole answer or
    stream: a 504 or a 502, as before the headers."""
    try:
        yield
    except httpx.TimeoutException:
        raise APIError(
            504, "the upstream stopped sending in time", code="upstream_timeout"
        ) from None
    except (httpx.HTTPError, ValueError) as exc:
        raise APIError(
            502,
            f"broken upstream answer: {_described(exc) or type(exc).__name__}",
            code="upstream_error",
        ) from None


def _described(exc: Exception) -> str:
    """What was wrong with an upstream's answer, in words that quote none of it.

    pydantic's message quotes the value it refused (``input_value='...'``): a
    misconfigured upstream's 200 (``{"detail": "db-7.internal refused user
    admin"}``) reached the tenant through it. The tenant reads where and what
    ("usage.prompt_tokens: Input should be a valid integer"); the operator's log
    has the whole error.
    """
    if not isinstance(exc, ValidationError):
        return str(exc)
    request_log.warning("the upstream's answer is not of the expected shape: %r", str(exc))
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "the answer"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


async def _upstream_error(response: httpx.Response, *, clients_model: bool) -> APIError:
    try:
        raw = await _read(response)
    finally:
        await response.aclose()
    try:
        data: Any = json.loads(raw)
    except ValueError:
        # A page, not a model server's words (a gateway's 502 or 504, a web server's
        # 404): it may name internal hosts, so the tenant is told its status and type,
        # and the operator's log has an excerpt.
        status, kind = response.status_code, _media_type(response)
        request_log.warning(
            "the upstream answered %d with a body that is not JSON (%s): %r",
            status,
            kind,
            raw[:500].decode("utf-8", "replace"),
        )
        data = f"HTTP {status} with a body that is not JSON ({kind}), not quoted"
    return _normalise(
        response.status_code,
        data,
        response.headers.get("retry-after"),
        clients_model=clients_model,
    )


def _media_type(response: httpx.Response) -> str:
    """The answer's media type (``text/html``) to name in a message and a log line, or
    what stands in for it: the header's raw bytes may hold control characters (a
    terminal's escapes, line breaks a log reader splits on), which h11 lets through."""
    value = response.headers.get("content-type")
    if value is None:
        return "no content-type"
    media = value.split(";")[0].strip()
    return media if _MEDIA_TYPE.fullmatch(media) else "an unreadable content-type"


def _normalise(
    status: int, data: Any, retry_after: str | None, *, clients_model: bool = False
) -> APIError:
    """Any upstream error shape as an ``APIError``.

    A 5xx becomes a 502: the upstream failed. So do 401, 403 and 404, which are
    about the proxy's own upstream key, model or URL, not the client's: passed on,
    an SDK would tell the client its key is wrong. Other 4xx (a bad request, a
    rate limit) are the client's to see and pass on as they are, and so is a 404
    for a body naming the client's own model (``clients_model``: embeddings) that
    is an error in OpenAI's JSON shape: the upstream saying it has no such model.
    Any other 404 (a web server's page, FastAPI's ``{"detail": "Not Found"}``) is a
    server with no such route: a wrong ``base_url``, the proxy's to fix.
    """
    info = data.get("error") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        info = data if isinstance(data, dict) else {"message": str(data)}
    message = info.get("message") or info.get("detail") or json.dumps(info)[:500]
    code = info.get("code")
    param = info.get("param")
    if status in (401, 403) or (status == 404 and not (clients_model and _api_error(data))):
        # The upstream's words on the proxy's credentials are not the client's to read;
        # nor is a page that is not JSON (an HTML 404 may name internal hosts).
        said = f": {message}" if status == 404 and not isinstance(data, str) else ""
        return APIError(
            502,
            f"the upstream refused the proxy's request ({status}{said}); "
            "the proxy's upstream api_key, model or base_url needs fixing",
            code=f"upstream_{status}",
        )
    answered = status if status < 500 else 502
    return APIError(
        answered,
        f"upstream: {message}" if status >= 500 else str(message),
        code=str(code) if code is not None else f"upstream_{status}",
        param=str(param) if param is not None else None,
        retry_after=_seconds(retry_after),
    )


def _api_error(data: Any) -> bool:
    """Whether an error body is in OpenAI's JSON shape, ``{"error": {"message": ...}}``
    or older vLLM's ``{"object": "error", "message": ...}``: a model server's answer."""
    if not isinstance(data, dict):
        return False
    info = data.get("error") if data.get("object") != "error" else data
    return isinstance(info, dict) and isinstance(info.get("message"), str)


def _json_object(answer: bytes) -> bool:
    """Whether ``answer`` is, at its ends, a JSON object, as every OpenAI answer is.

    Its ends only: parsing megabytes of vectors would hold the event loop for a
    check the client makes anyway; a page or a text is told from its first byte.
    """
    return answer[:64].lstrip()[:1] == b"{" and answer[-64:].rstrip()[-1:] == b"}"


def _seconds(value: str | None) -> float | None:
    """An upstream's ``Retry-After`` in seconds, or ``None`` when it names no wait.

    An HTTP date, and what reads as a float but is no wait: ``inf`` and ``nan``
    slept the retry ``nan`` or failed the envelope's ``int(inf)`` (a 500 outside
    it, for an upstream's 429), and a negative one is no time to wait for.
    """
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, BACKOFF_MAX_S)
    return float(min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S))
