"""The backend for any OpenAI-compatible server: vLLM, SGLang, or ctxproto's own.

That is how ctxproto goes past one machine: those engines do tensor and pipeline
parallelism and their own automatic prefix caching, which the SDK's prefix-stable
prompts feed. Only the standard library is used (``urllib``), so the backend
adds no dependency. Every call streams (``stream_options.include_usage``), so
TTFT is measured on the client, where a user feels it.

Failures are typed so that callers can choose what to retry: a refused
connection or an unknown host fails at once with ``BackendUnavailableError``; no
answer (or a stalled stream) within ``timeout`` seconds is a
``BackendTimeoutError``; 429 and 5xx answers are retried with exponential backoff
(honouring ``Retry-After``) up to ``max_retries`` times, and a status that
remains is an ``UpstreamStatusError`` carrying the status code and the server's
message. A 400 or 422 is the caller's mistake and raises ``ConfigError`` with the
server's message, like the local engine would.

A server that ignores ``stream`` and answers with one JSON chat completion is read
as that answer. A stream counts as an answer only if it ends as the protocol says: with a finish
reason or ``data: [DONE]``. An error event in the stream (a server cannot change the
status once it has sent the headers, so ctxproto's proxy, vLLM and SGLang report a
failure mid-answer that way) fails the call with the server's message, and a stream
that just stops (the server died, a proxy cut it) is a ``BackendUnavailableError``:
neither is returned as a finished answer with the text so far.
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from ctxproto.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
    UpstreamStatusError,
)
from ctxproto.runtime.backends.base import Backend, CompletionStream
from ctxproto.runtime.params import Completion, GenerationParams, RequestMetrics

__all__ = ["OpenAIBackend"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 8.0

_STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "timeout_error": 408,
    "rate_limit_error": 429,
}
"""The HTTP status an OpenAI error ``type`` stands for, for an error event that names
no numeric ``code`` (ctxproto's proxy sends string codes; vLLM sends the status)."""


class OpenAIBackend(Backend):
    """Chat completions over HTTP against ``base_url`` (for example ``http://host:8000/v1``)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "default",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        cache_salt: str | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("must start with http:// or https://", key="base_url")
        if timeout <= 0 or max_retries < 0:
            raise ConfigError("timeout must be > 0 and max_retries >= 0", key="timeout")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.cache_salt = cache_salt
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def generate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        parts: list[str] = []
        stream = _Stream(self._open(messages, params or GenerationParams()))
        for delta in stream:
            parts.append(delta)
        return stream.completion("".join(parts))

    def stream(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> CompletionStream:
        stream = _Stream(self._open(messages, params or GenerationParams()))
        # Closed before its first delta, the generator would run none of its code, and
        # the open answer would go on streaming until the stream was garbage collected.
        return CompletionStream(iter(stream), stream.completion, stream.close)

    def _open(self, messages: list[dict[str, Any]], params: GenerationParams) -> Any:
        """POST the request, retrying 429/5xx with backoff; returns the open response."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if params.ignore_eos:
            body["ignore_eos"] = True  # vLLM and llama.cpp's server; not OpenAI's API
        if params.prediction:
            body["prediction"] = {"type": "content", "content": params.prediction}
        if self.cache_salt:
            body["cache_salt"] = self.cache_salt  # vLLM: no prefix sharing across salts
        data = json.dumps(body).encode()
        url = f"{self.base_url}/chat/completions"
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=data, headers=self._headers, method="POST")
            try:
                return urllib.request.urlopen(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code in RETRY_STATUSES and attempt < self.max_retries:
                    time.sleep(_backoff(attempt, exc.headers.get("Retry-After")))
                    attempt += 1
                    continue
                if exc.code in (400, 422):
                    raise ConfigError(f"the server rejected the request: {message}") from None
                raise UpstreamStatusError(
                    f"{url} answered HTTP {exc.code}: {message}",
                    status_code=exc.code,
                    upstream_message=message,
                ) from None
            except urllib.error.URLError as exc:
                raise _connection_error(url, exc.reason, self.timeout) from None
            except TimeoutError:
                # Connected, but no status line in time: urllib does not wrap this one.
                raise BackendTimeoutError(f"{url} did not answer within {self.timeout} s") from None
            except OSError as exc:
                # The server closed or reset the connection before answering.
                raise BackendUnavailableError(f"{url} dropped the connection: {exc}") from None
            except http.client.InvalidURL as exc:
                raise ConfigError(str(exc), key="base_url") from None
            except http.client.HTTPException as exc:
                # Not HTTP: a garbled status line, a body cut short. urllib wraps none of them.
                raise BackendUnavailableError(f"{url} broke the HTTP exchange: {exc!r}") from None


class _Stream:
    """Reads server-sent chat-completion chunks: text deltas, then finish reason and usage."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._start = time.perf_counter()
        self._first: float | None = None
        self._finish_reason: str | None = None
        self._usage = _usage_counts({})
        """The usage counts the server sent, by ``RequestMetrics`` field (none: 0)."""
        self._events = 0

    def __iter__(self) -> Iterator[str]:
        try:
            if _content_type(self._response) == "application/json":
                yield from self._whole_answer()
                return
            cut = False
            for raw in self._response:
                try:
                    line = raw.decode("utf-8").strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[len("data:") :].strip()
                    event = None if payload == "[DONE]" else json.loads(payload)
                except ValueError:
                    if raw.endswith(b"\n"):
                        raise
                    # The connection closed inside the last line, and what came of it is no
                    # event: one cut short is dropped, as SSE drops it, so the stream ended
                    # early unless it had finished. A last line that is whole JSON (or
                    # [DONE]) only lacks its newline, as servers that close right after
                    # the final event send it, and is read as the event it is.
                    cut = True
                    break
                self._events += 1
                if event is None:
                    return
                chunk = _json_object(event, "an event")
                failure = _stream_failure(chunk)
                if failure is not None:
                    raise failure
                usage = _json_object(chunk.get("usage"), "usage")
                if usage:
                    self._usage = _usage_counts(usage)
                for choice in _json_list(chunk.get("choices"), "choices"):
                    choice = _json_object(choice, "a choice")
                    if choice.get("finish_reason"):
                        self._finish_reason = choice["finish_reason"]
                    text = _json_object(choice.get("delta"), "a delta").get("content")
                    if text is not None and not isinstance(text, str):
                        raise ValueError("a delta's content is not text")
                    if text:
                        if self._first is None:
                            self._first = time.perf_counter()
                        yield text
            if not self._events and not cut:
                raise BackendError(
                    f"the answer is not an event stream (Content-Type "
                    f"{_content_type(self._response)}): is base_url the API's /v1?"
                )
            if self._finish_reason is None:
                raise BackendUnavailableError(
                    "the stream ended early: the server sent neither a finish reason nor [DONE]"
                )
        except TimeoutError:
            raise BackendTimeoutError("the server stopped sending within the timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            raise BackendUnavailableError(f"the connection broke mid-answer: {exc!r}") from None
        except ValueError as exc:
            raise BackendError(f"broken response stream: {exc}") from None
        finally:
            self._response.close()

    def close(self) -> None:
        """Hang up: the server stops generating the answer (closing twice is harmless)."""
        self._response.close()

    def _whole_answer(self) -> Iterator[str]:
        """The answer of a server that ignored ``stream`` and sent one chat completion.

        Some OpenAI-compatible servers do not stream; their whole answer is as good
        as a stream of it, and an error envelope in it fails the call the same way.
        """
        answer = json.loads(self._response.read())
        if not isinstance(answer, dict):
            raise ValueError("the answer is not a JSON object")
        failure = _stream_failure(answer)
        if failure is not None:
            raise failure
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ValueError("the answer holds no choices")
        self._usage = _usage_counts(_json_object(answer.get("usage"), "usage"))
        self._finish_reason = choices[0].get("finish_reason") or "stop"
        text = _json_object(choices[0].get("message"), "the message").get("content")
        if isinstance(text, str) and text:
            self._first = time.perf_counter()
            yield text

    def completion(self, text: str) -> Completion:
        finished = time.perf_counter()
        metrics = RequestMetrics.from_times(
            arrival=self._start,
            first_token=self._first or finished,
            finished=finished,
            **self._usage,
        )
        # A server that closed the stream with [DONE] but named no reason ended the answer
        # itself, which OpenAI calls "stop"; a stream cut short never gets here.
        finish_reason = self._finish_reason or "stop"
        return Completion(text=text, finish_reason=finish_reason, metrics=metrics)


def _json_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, ``{}`` for null (a field left out); anything else
    is a ``ValueError``, read as a broken stream, never an ``AttributeError`` escaping
    the backend's errors."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object: {json.dumps(value)[:80]}")
    return value


def _json_list(value: Any, what: str) -> list[Any]:
    """``value`` if it is a JSON array, ``[]`` for null; anything else a ``ValueError``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a JSON array: {json.dumps(value)[:80]}")
    return value


def _usage_counts(usage: dict[str, Any]) -> dict[str, int]:
    """The token counts of a ``usage`` object, by ``RequestMetrics`` field; a count sent as
    null (as servers dumping the openai SDK's objects send them) or left out is 0."""
    details = _json_object(usage.get("prompt_tokens_details"), "prompt_tokens_details")
    answer = _json_object(usage.get("completion_tokens_details"), "completion_tokens_details")
    counts = {
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": details.get("cached_tokens"),
        "output_tokens": usage.get("completion_tokens"),
        "accepted_prediction_tokens": answer.get("accepted_prediction_tokens"),
        "rejected_prediction_tokens": answer.get("rejected_prediction_tokens"),
    }
    for name, count in counts.items():
        number = isinstance(count, int | float) and not isinstance(count, bool)
        if count is not None and not (number and math.isfinite(count)):
            raise ValueError(f"usage count {name} is not a number: {json.dumps(count)[:80]}")
    return {name: int(count or 0) for name, count in counts.items()}


def _stream_failure(chunk: dict[str, Any]) -> BackendError | None:
    """The failure an error event reports, or ``None`` for an ordinary chunk.

    The event is ``{"error": {"message", "type", "code"}}`` (OpenAI's envelope: ctxproto's
    proxy, vLLM, SGLang) or, from older vLLM, those fields at the top level with
    ``"object": "error"``, or Hugging Face TGI's ``{"error": "...", "error_type": ...}``.
    It is a ``BackendError`` whatever its code: vLLM labels any
    failure after the stream began a 400 "BadRequestError", and a request the server
    accepted and started answering was not the caller's mistake.
    """
    error = _error_object(chunk)
    if error is None:
        return None
    message = str(error.get("message") or error)
    code = error.get("code")
    status = (
        code if isinstance(code, int) else _STATUS_OF_ERROR_TYPE.get(str(error.get("type")), 500)
    )
    if status in (408, 504):
        return BackendTimeoutError(f"the server timed out mid-answer: {message}")
    return UpstreamStatusError(
        f"the server failed mid-answer (status {status}): {message}",
        status_code=status,
        upstream_message=message,
    )


def _error_object(body: Any) -> dict[str, Any] | None:
    """The error an answer body reports, as OpenAI's error object, or ``None``.

    OpenAI, ctxproto's proxy, vLLM and SGLang nest it (``{"error": {"message", ...}}``);
    older vLLM puts its fields at the top level with ``"object": "error"``; TGI sends
    the message itself as ``error``, its kind as ``error_type``.
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error, "type": body.get("error_type")}
    return body if body.get("object") == "error" else None


def _backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds to wait before retry ``attempt``: the server's ``Retry-After`` (seconds or
    an HTTP date) when it gives a usable one, else exponential; never over the maximum."""
    wait = _retry_after_s(retry_after) if retry_after is not None else None
    if wait is None:
        wait = BACKOFF_BASE_S * 2**attempt
    return float(min(max(wait, 0.0), BACKOFF_MAX_S))


def _retry_after_s(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP date is in GMT
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp() - time.time()
    return seconds if math.isfinite(seconds) else None


def _content_type(response: Any) -> str:
    headers = getattr(response, "headers", None)
    return headers.get_content_type() if headers is not None else "text/event-stream"


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read().decode("utf-8"))
    except (ValueError, OSError, http.client.HTTPException):
        return exc.reason if isinstance(exc.reason, str) else str(exc)
    error = _error_object(body)
    return str((error or {}).get("message") or body)


def _connection_error(url: str, reason: object, timeout: float) -> BackendError:
    if isinstance(reason, TimeoutError):
        return BackendTimeoutError(f"{url} did not answer within {timeout} s")
    if isinstance(reason, ConnectionRefusedError):
        return BackendUnavailableError(
            f"connection refused by {url}: is the server running and listening there?"
        )
    return BackendUnavailableError(f"cannot reach {url}: {reason}")
