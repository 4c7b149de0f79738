"""The chat-session API: one call per user turn.

Each turn runs the pipeline (semantic cache -> retrieval -> window / summary /
compression -> assemble), then the backend unless a stage already answered,
hands the backend's answer to every stage's ``after_answer`` (where the
semantic cache files it), appends the turn to the session's
history, and returns the answer with a per-turn report: tokens sent, tokens
saved, cache hits, prefix tokens served from the KV cache, TTFT, latency.

History lives in a session store (a folder, or a ``redis://`` server that
replicas share) keyed by tenant and session id, so a session survives a
restart and tenants never see each other's conversations.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ctxproto._config_model import ConfigModel
from ctxproto._in_thread import call_in_thread, iterate_in_thread
from ctxproto.config import load_yaml_mapping, validation_error_to_config_error
from ctxproto.context import Context
from ctxproto.documents import Document
from ctxproto.errors import ConfigError, UsageError
from ctxproto.limits import MAX_CONFIG_BYTES, excerpt, read_text_capped
from ctxproto.messages import Message
from ctxproto.pipeline import Pipeline, PipelineResult
from ctxproto.prompt import AssembledPrompt, messages_sent_again
from ctxproto.runtime.engine_settings import EngineSettings
from ctxproto.runtime.params import GenerationParams
from ctxproto.stages.base import StageReport
from ctxproto.stages.folders import FolderOrRedisURL
from ctxproto.stores.chat_history import load_history, save_history
from ctxproto.stores.session_state import SessionStore, open_session_store

if TYPE_CHECKING:
    from ctxproto.runtime.backends.base import Backend

__all__ = [
    "BackendConfig",
    "ChatSession",
    "TurnReport",
    "TurnResult",
    "build_backend",
    "load_chatbot_config",
]


class BackendConfig(ConfigModel, EngineSettings):
    """The ``backend:`` section of a chatbot config."""

    type: Literal["local", "openai"] = "local"
    model: str = Field(default="default", description="Local model name/path, or remote model.")
    base_url: str | None = Field(default=None, description="OpenAI-compatible server URL.")
    api_key: str | None = None
    timeout: float = Field(default=60.0, gt=0)


def build_backend(config: BackendConfig) -> Backend:
    """A ``Backend`` from its config: the local engine or an OpenAI-compatible client."""
    from ctxproto.errors import ConfigError
    from ctxproto.runtime import LocalBackend, OpenAIBackend

    if config.type == "openai":
        if not config.base_url:
            raise ConfigError("an openai backend needs base_url", key="backend.base_url")
        return OpenAIBackend(
            config.base_url, model=config.model, api_key=config.api_key, timeout=config.timeout
        )
    return LocalBackend(config.load_engine())


class TurnReport(BaseModel):
    """What one turn cost and saved."""

    model_config = ConfigDict(extra="forbid")

    turn: int
    original_tokens: int = Field(description="Prompt tokens with no stages and no budget.")
    prompt_tokens: int = Field(description="Prompt tokens actually sent (0 on a cache hit).")
    tokens_saved: int
    semantic_cache_hit: bool
    cached_prefix_tokens: int = Field(description="Prompt tokens whose KV was reused.")
    output_tokens: int
    ttft_ms: float
    latency_ms: float
    pipeline_ms: float
    stages: list[StageReport]


class TurnResult(BaseModel):
    """The answer to one turn, its report, and the prompt sent (``None`` on a cache hit)."""

    answer: str
    report: TurnReport
    prompt: AssembledPrompt | None = None


class ChatSession:
    """A conversation: a pipeline in front of a backend, with persistent history.

    ``ask`` answers one user turn; ``stream`` yields the answer as it is
    generated; ``aask`` and ``astream`` are their async forms, which run the turn
    in worker threads. ``last_turn`` is the newest turn's result: a streamed
    turn's once its stream has ended, until the caller starts another turn.

    A session runs one turn at a time, and a turn asked while another of its turns
    is in progress is a ``UsageError`` at once, never a wait (as a thread with an
    active run refuses new runs in OpenAI's Assistants API): a turn that waited
    could wait for ever on the very code that holds the session, such as the loop
    reading an unfinished stream. A turn is in progress from its start to its end,
    a stream's from its first delta to its last or to its close. Different
    ``ChatSession`` objects run their turns at the same time, even with one session
    id and store: each reads the stored history once, when built, and rewrites it
    after each of its turns.

    Build one from Python objects or from a chatbot YAML
    (``ChatSession.from_yaml``), which holds the pipeline and a ``backend:``
    and ``generation:`` section; ``generation`` in Python is ``GenerationParams``
    or, as in the file, a dict of its fields. An argument of the wrong kind is a
    ``UsageError`` (``ConfigError`` for a value) naming it, before any turn.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        backend: Backend,
        *,
        system_prompt: str = "",
        session_id: str | None = None,
        tenant_id: str = "default",
        generation: GenerationParams | Mapping[str, Any] | None = None,
        history_store: SessionStore | None = None,
    ) -> None:
        _check_parts(pipeline, backend)
        _check_text("system_prompt", system_prompt, "a str")
        # An id of another type reached the first turn's Context, whose error was then
        # taken for one in the documents ("got 5 (expected Document(id=...) ...)").
        if session_id is not None:
            _check_text("session_id", session_id, "a str, or None for a new id")
        _check_text("tenant_id", tenant_id, "a str")
        self.pipeline = pipeline
        self.backend = backend
        self.system_prompt = system_prompt
        self.session_id = session_id or uuid.uuid4().hex
        self.tenant_id = tenant_id
        self.generation = _generation_params(generation)
        self.history_store = history_store
        self.last_turn: TurnResult | None = None
        self.history: list[Message] = self._load_history()
        self._busy = threading.Lock()
        """Held while one of the session's turns is in progress."""
        pipeline.warm_up()

    # -- construction -------------------------------------------------------

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        *,
        session_id: str | None = None,
        tenant_id: str = "default",
        backend: Backend | None = None,
    ) -> ChatSession:
        """A session from a chatbot config; ``backend`` overrides the file's ``backend:``."""
        source = str(path)
        pipeline_data, settings = load_chatbot_config(path)
        pipeline = Pipeline.from_dict(pipeline_data, source=source)
        generation = _generation_params(settings.generation, file=source)
        system_prompt = settings.system_prompt
        if settings.system_prompt_file:
            prompt_path = Path(source).parent / settings.system_prompt_file
            system_prompt = _read_text(prompt_path, source, "system_prompt_file")
        store = None
        if settings.history_path:
            store = open_session_store(settings.history_path, namespace="history")
        return cls(
            pipeline,
            backend if backend is not None else build_backend(settings.backend),
            system_prompt=system_prompt,
            session_id=session_id,
            tenant_id=tenant_id,
            generation=generation,
            history_store=store,
        )

    # -- turns --------------------------------------------------------------

    def ask(self, question: str, *, documents: list[Document] | None = None) -> TurnResult:
        """Answer one user turn; ``UsageError`` while another turn is in progress."""
        self._claim()
        try:
            return self._ask(question, documents)
        finally:
            self._busy.release()

    def stream(
        self, question: str, *, documents: list[Document] | None = None
    ) -> Generator[str, None, None]:
        """Yield the answer as text deltas; the turn's result is ``last_turn`` once the
        stream has ended, until the caller starts another turn.

        The turn is in progress from the first delta asked for until the stream ends
        or is closed: ``close()`` stops the generation and keeps no half turn. A
        ``for`` loop left early over a stream nothing else refers to closes it at
        once (CPython frees the generator then); one kept in a variable and left
        unfinished makes the next turn a ``UsageError`` until it is finished or
        closed.
        """
        self._claim()
        try:
            yield from self._stream(question, documents)
        finally:
            self._busy.release()

    async def aask(self, question: str, *, documents: list[Document] | None = None) -> TurnResult:
        """``ask`` without blocking the event loop: the turn runs in a worker thread.

        Refused at once, as ``ask`` is, while another turn is in progress. Once
        started, the turn runs to its end and is kept in the history even if the
        caller is cancelled; the session is free once it has ended.
        """
        self._claim()  # on the loop's thread: of two aask at once, the second is refused
        return await call_in_thread(
            functools.partial(self._ask, question, documents), then=self._busy.release
        )

    async def astream(
        self, question: str, *, documents: list[Document] | None = None
    ) -> AsyncGenerator[str, None]:
        """``stream`` without blocking the event loop: each delta is made in a worker
        thread.

        ``aclose()`` (or ``contextlib.aclosing`` around it), or cancelling the task
        that reads it, stops the generation and keeps no half turn; a delta being
        made then is finished first, and the session is free after. An ``async
        for`` left early closes it only when the event loop finalizes it, a step
        or two later if nothing else refers to it (PEP 525).
        """
        self._claim()
        steps = iterate_in_thread(self._stream(question, documents), then=self._busy.release)
        async with contextlib.aclosing(steps):
            async for delta in steps:
                yield delta

    def reset(self) -> None:
        """Forget this session's history (and its stored copy).

        A ``UsageError`` while a turn is in progress, as a second turn is: that turn
        was asked with the old history and would store its exchange after the reset.
        """
        self._claim("a reset")
        try:
            self.history = []
            if self.history_store is not None:
                self.history_store.delete(self.tenant_id, self.session_id)
        finally:
            self._busy.release()

    # -- internals ----------------------------------------------------------

    def _claim(self, what: str = "the next turn") -> None:
        """Take the session for a turn, or refuse the turn: never wait for it."""
        if not self._busy.acquire(blocking=False):
            raise UsageError(
                f"session {self.session_id!r} is already answering a turn, and runs one "
                "at a time: wait for that turn to end, finish or close its stream "
                f"(stream.close()) before {what}, or use one ChatSession per "
                "conversation that runs at the same time"
            )

    def _ask(self, question: str, documents: list[Document] | None) -> TurnResult:
        start = time.perf_counter()
        result = self.pipeline.run(self._context(question, documents))
        if result.answer is not None:
            return self._finish(question, result.answer, result, start, first_token=None)
        messages = self._messages(result)
        completion = self.backend.generate(messages, self._generation(messages, question))
        metrics = completion.metrics
        return self._finish(
            question,
            completion.text,
            result,
            start,
            first_token=start + (result.ms + metrics.ttft_ms) / 1000.0,
            finish_reason=completion.finish_reason,
            cached=metrics.cached_tokens,
            output_tokens=metrics.output_tokens,
        )

    def _stream(
        self, question: str, documents: list[Document] | None
    ) -> Generator[str, None, None]:
        start = time.perf_counter()
        result = self.pipeline.run(self._context(question, documents))
        if result.answer is not None:
            yield result.answer
            self._finish(question, result.answer, result, start, first_token=None)
            return
        first_token: float | None = None
        parts: list[str] = []
        messages = self._messages(result)
        deltas = self.backend.stream(messages, self._generation(messages, question))
        try:
            for delta in deltas:
                if first_token is None:
                    first_token = time.perf_counter()
                parts.append(delta)
                yield delta
        finally:  # the caller left early: stop the generation now, not at garbage collection
            deltas.close()
        completion = deltas.completion
        metrics = completion.metrics if completion is not None else None
        self._finish(
            question,
            "".join(parts),
            result,
            start,
            first_token=first_token,
            finish_reason=completion.finish_reason if completion is not None else None,
            cached=metrics.cached_tokens if metrics is not None else 0,
            output_tokens=metrics.output_tokens if metrics is not None else None,
        )

    def _context(self, question: str, documents: list[Document] | None) -> Context:
        # A message dict: the session adds the role itself.
        _check_text(
            "question", question, "a str: the user's text alone, as the session keeps the history"
        )
        if not question.strip():  # a model answers anything, and the history would keep it
            raise ConfigError("must hold text; an empty question is no turn", key="question")
        fields: dict[str, Any] = {
            "system_prompt": self.system_prompt,
            "history": list(self.history),
            "query": Message(role="user", content=question),
            "documents": documents if documents is not None else [],
            "session_id": self.session_id,
            "tenant_id": self.tenant_id,
            "answer_limit": (self.generation or GenerationParams()).max_new_tokens,
        }
        try:
            return Context(**fields)
        except ValidationError as exc:
            # Only the documents come unchecked, but the error is named by its own
            # location: a field checked elsewhere must never be blamed on the documents.
            error = validation_error_to_config_error(exc, data=fields)
            if error.key is None or not error.key.startswith("documents"):
                raise error from None
            raise ConfigError(error.detail, key=error.key, expected=_DOCUMENT) from None

    def _generation(self, messages: list[dict[str, Any]], question: str) -> GenerationParams | None:
        """The turn's parameters; unless they say otherwise, the prefix cache keeps only
        the messages the next turn sends again (``messages_sent_again``)."""
        keep = messages_sent_again(messages, question)
        if keep is None or (
            self.generation is not None and self.generation.cache_messages is not None
        ):
            return self.generation
        base = self.generation or GenerationParams()
        return base.model_copy(update={"cache_messages": keep})

    @staticmethod
    def _messages(result: PipelineResult) -> list[dict[str, Any]]:
        assert result.prompt is not None
        return result.prompt.messages

    def _finish(
        self,
        question: str,
        answer: str,
        result: PipelineResult,
        start: float,
        *,
        first_token: float | None,
        finish_reason: str | None = "stop",
        cached: int = 0,
        output_tokens: int | None = None,
    ) -> TurnResult:
        hit = result.prompt is None
        self.history += [
            Message(role="user", content=question),
            Message(role="assistant", content=answer),
        ]
        self._save_history()
        self.pipeline.after_answer(result, answer, finish_reason, output_tokens)
        end = time.perf_counter()
        counter = self.pipeline.counter
        report = TurnReport(
            turn=len(self.history) // 2,
            original_tokens=result.original_tokens,
            prompt_tokens=result.prompt_tokens,
            tokens_saved=result.original_tokens - result.prompt_tokens,
            semantic_cache_hit=hit,
            cached_prefix_tokens=cached,
            output_tokens=output_tokens if output_tokens is not None else counter.count(answer),
            ttft_ms=((first_token or end) - start) * 1000.0,
            latency_ms=(end - start) * 1000.0,
            pipeline_ms=result.ms,
            stages=result.reports,
        )
        self.last_turn = TurnResult(answer=answer, report=report, prompt=result.prompt)
        return self.last_turn

    def _load_history(self) -> list[Message]:
        if self.history_store is None:
            return []
        return load_history(self.history_store, self.tenant_id, self.session_id)

    def _save_history(self) -> None:
        if self.history_store is not None:
            save_history(self.history_store, self.tenant_id, self.session_id, self.history)


_DOCUMENT = 'Document(id=..., text=...) or {"id": ..., "text": ...} for each document'
"""What ``documents`` holds: ids name documents in reports and cache scopes, so a bare
string, with no id, is not taken as one."""


def _generation_params(
    generation: GenerationParams | Mapping[str, Any] | None, *, file: str | None = None
) -> GenerationParams | None:
    """``generation`` as ``GenerationParams``: a mapping (as a config file holds) is
    validated into one, its bad key named under ``generation``.

    A dict given in Python failed at the first turn with an ``AttributeError``, although
    the same keys are taken from a chatbot config's ``generation:`` section. A key
    that is not a string (``{1: 2}``) is refused here too: passed on as keywords, it
    raised a bare ``TypeError``.
    """
    if generation is None or isinstance(generation, GenerationParams):
        return generation
    if not isinstance(generation, Mapping) or not all(isinstance(k, str) for k in generation):
        raise ConfigError(
            f"is {excerpt(generation)}",
            file=file,
            key="generation",
            expected="GenerationParams(max_new_tokens=...) or a dict of its fields",
        )
    try:
        return GenerationParams(**generation)
    except ConfigError as exc:
        key = f"generation.{exc.key}" if exc.key else "generation"
        raise ConfigError(exc.detail, file=file, key=key) from exc


def _check_text(name: str, value: object, expected: str) -> None:
    """Refuse ``value``, the argument ``name``, unless it is text, saying what to pass."""
    if not isinstance(value, str):
        raise ConfigError(f"is {excerpt(value)}, not text", key=name, expected=expected)


def _check_parts(pipeline: object, backend: object) -> None:
    """Refuse a session whose pipeline or backend is not one, saying what to pass.

    Each failed later, deep inside, as an ``AttributeError`` (``warm_up``, ``generate``)
    that named neither argument. A backend is a protocol, so it is recognised by its
    two methods rather than by its class.
    """
    is_backend = callable(getattr(backend, "generate", None)) and callable(
        getattr(backend, "stream", None)
    )
    if isinstance(backend, Pipeline) and not isinstance(pipeline, Pipeline):
        raise UsageError("ChatSession takes the pipeline first: ChatSession(pipeline, backend)")
    if not isinstance(pipeline, Pipeline):
        raise UsageError(
            f"pipeline is {excerpt(pipeline)}, not a Pipeline: "
            "give Pipeline([...]) or Pipeline.from_yaml(path)"
        )
    if not is_backend:
        raise UsageError(
            f"backend is {excerpt(backend)}, not a Backend: give one such as "
            "LocalBackend(Engine()), or build_backend(BackendConfig(type=...)) "
            "for a config's backend section"
        )


class _SessionSettings(ConfigModel):
    model_config = ConfigDict(extra="forbid")

    backend: BackendConfig = Field(default_factory=BackendConfig)
    generation: dict[str, Any] = Field(default_factory=dict)
    system_prompt: str = ""
    system_prompt_file: str | None = None
    history_path: FolderOrRedisURL | None = None

    @field_validator("system_prompt_file")
    @classmethod
    def _one_system_prompt(cls, value: str | None, info: ValidationInfo) -> str | None:
        """With both, the file's prompt replaced the written one without a word."""
        if value and info.data.get("system_prompt"):
            raise ValueError("give system_prompt or system_prompt_file, not both")
        return value


def load_chatbot_config(path: str | Path) -> tuple[dict[str, Any], _SessionSettings]:
    """Split a chatbot YAML into its pipeline mapping and its validated session settings."""
    data = load_yaml_mapping(path)
    session = {key: data.pop(key) for key in _SessionSettings.model_fields if key in data}
    try:
        return data, _SessionSettings.model_validate(session)
    except ValidationError as exc:
        raise validation_error_to_config_error(exc, file=str(path), data=session) from exc


def _read_text(path: Path, source: str, key: str) -> str:
    """The UTF-8 text of ``path``, a file the config ``source`` names at ``key``.

    Read as a config is (``read_text_capped``): a file that is not UTF-8 ended
    ``from_yaml`` in a bare ``UnicodeDecodeError``, and ``/dev/zero`` never ended.
    """
    try:
        return read_text_capped(path, limit=MAX_CONFIG_BYTES, what=f"file {path}")
    except ConfigError as exc:  # placed in the config that names the file
        raise ConfigError(exc.detail, file=source, key=key) from None
