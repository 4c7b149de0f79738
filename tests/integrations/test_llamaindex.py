"""The LlamaIndex adapter: round-trips, the postprocessor in a query engine, the memory."""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document as LlamaDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, ToolCallBlock
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from ctxproto import ConfigError, Document, Message
from ctxproto.integrations.llamaindex import (
    CtxprotoEmbedding,
    CtxprotoLLM,
    CtxprotoNodePostprocessor,
    SummaryChatMemory,
    from_document,
    from_message,
    to_document,
    to_message,
)
from ctxproto.messages import FunctionCall, ToolCall
from ctxproto.runtime import ScriptedBackend
from ctxproto.stages.relevance_filter import RelevanceFilter
from ctxproto.stages.summarizer import Summarizer
from ctxproto.stages.token_compressor import TokenCompressor
from ctxproto.stores.session_state import SessionStateStore

MESSAGES = [
    Message(role="system", content="You are terse.", pinned=True),
    Message(role="developer", content="Answer in English."),
    Message(role="user", content="Weather in Oslo and Bergen?", name="ana"),
    Message(
        role="assistant",
        content=None,
        tool_calls=[
            ToolCall(id="c1", function=FunctionCall(name="weather", arguments='{"city": "Oslo"}')),
            ToolCall(id="c2", function=FunctionCall(name="weather", arguments="{not json")),
        ],
    ),
    Message(role="tool", content="4 C, rain", tool_call_id="c1", name="weather"),
    Message(role="tool", content="", tool_call_id="c2"),
    Message(role="assistant", content="Oslo has 4 C and rain."),
]


def test_ctxproto_messages_survive_llamaindex_and_back():
    assert [to_message(from_message(m)) for m in MESSAGES] == MESSAGES


def test_tool_calls_travel_as_tool_call_blocks():
    chat = from_message(MESSAGES[3])
    blocks = [b for b in chat.blocks if isinstance(b, ToolCallBlock)]
    assert [(b.tool_call_id, b.tool_name, b.tool_kwargs) for b in blocks] == [
        ("c1", "weather", {"city": "Oslo"}),
        ("c2", "weather", "{not json"),
    ]
    assert from_message(MESSAGES[4]).additional_kwargs["tool_call_id"] == "c1"


def test_llamaindex_messages_survive_ctxproto_and_back():
    original = ChatMessage(
        role=MessageRole.ASSISTANT,
        blocks=[ToolCallBlock(tool_call_id="t1", tool_name="orders", tool_kwargs={"id": 7})],
    )
    back = from_message(to_message(original))
    assert back.role == original.role
    assert back.blocks == original.blocks
    legacy = ChatMessage(  # tool calls only in additional_kwargs, as older code writes them
        role=MessageRole.ASSISTANT,
        content="",
        additional_kwargs={
            "tool_calls": [
                {"id": "t2", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]
        },
    )
    assert to_message(legacy).tool_calls == [
        ToolCall(id="t2", function=FunctionCall(name="f", arguments="{}"))
    ]


def test_older_tool_calls_convert_as_a_chat_store_saved_them():
    from pydantic import BaseModel

    class Function(BaseModel):  # the openai client's objects, as its streaming returned them
        name: str
        arguments: str

    class StreamedCall(BaseModel):
        index: int
        id: str
        type: str
        function: Function

    expected = [ToolCall(id="t2", function=FunctionCall(name="f", arguments='{"a": 1}'))]
    streamed = StreamedCall(
        index=0, id="t2", type="function", function=Function(name="f", arguments='{"a": 1}')
    )
    for calls in ([streamed], [streamed.model_dump()]):  # as held, and as a chat store saved it
        message = ChatMessage(
            role=MessageRole.ASSISTANT, content="", additional_kwargs={"tool_calls": calls}
        )
        assert to_message(message).tool_calls == expected
    broken = ChatMessage(
        role=MessageRole.ASSISTANT, additional_kwargs={"tool_calls": [{"id": "t3"}]}
    )
    with pytest.raises(ConfigError, match="not a list of tool calls"):
        to_message(broken)
    block = ToolCallBlock(tool_call_id="t1", tool_name="orders", tool_kwargs={"id": 7})
    for stored in (5, None, True):  # a bare TypeError from reading them for raw arguments
        with_block = ChatMessage(
            role=MessageRole.ASSISTANT, blocks=[block], additional_kwargs={"tool_calls": stored}
        )
        assert to_message(with_block).tool_calls == [
            ToolCall(id="t1", function=FunctionCall(name="orders", arguments='{"id": 7}'))
        ]
    without = ChatMessage(role=MessageRole.ASSISTANT, additional_kwargs={"tool_calls": 5})
    with pytest.raises(ConfigError, match="not a list of tool calls"):
        to_message(without)


@pytest.mark.parametrize("key", ["name", "tool_call_id"])
def test_a_name_or_tool_call_id_that_is_no_string_is_a_config_error_naming_it(key):
    message = ChatMessage(role=MessageRole.TOOL, content="4 C", additional_kwargs={key: 7})
    with pytest.raises(ConfigError, match=rf"additional_kwargs\['{key}'\] is 7, not a string"):
        to_message(message)


def test_the_pinned_flag_of_a_message_or_a_node_is_a_boolean_and_anything_else_is_refused():
    def message(value: object) -> ChatMessage:
        return ChatMessage(role="user", content="Hi.", additional_kwargs={"ctxproto_pinned": value})

    def node(value: object) -> NodeWithScore:
        return NodeWithScore(node=TextNode(text="t", metadata={"ctxproto_pinned": value}))

    assert [to_message(message(v)).pinned for v in (True, False, None)] == [True, False, False]
    assert [to_document(node(v)).pinned for v in (True, False, None)] == [True, False, False]
    assert to_document(node(np.bool_(True))).pinned is True  # read back from an array store
    for value in ("false", "true", 1):  # "false" read by its truth pinned it
        with pytest.raises(ConfigError, match=r"additional_kwargs\['ctxproto_pinned'\] is"):
            to_message(message(value))
        with pytest.raises(ConfigError, match=r"metadata\['ctxproto_pinned'\] is .*, not a bool"):
            to_document(node(value))


def test_a_tool_call_with_no_id_is_refused_as_in_the_langchain_adapter():
    """No tool result could ever be matched to it; it converted to id ''. An empty id
    is kept: it round-trips, as histories of earlier versions hold it."""
    block = ToolCallBlock(tool_call_id=None, tool_name="lookup", tool_kwargs={})
    with pytest.raises(ConfigError, match="tool call 'lookup' has no id"):
        to_message(ChatMessage(role=MessageRole.ASSISTANT, blocks=[block]))
    older = {"id": None, "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    message = ChatMessage(role=MessageRole.ASSISTANT, additional_kwargs={"tool_calls": [older]})
    with pytest.raises(ConfigError, match=r"additional_kwargs\['tool_calls'\] is not a list"):
        to_message(message)
    empty = ToolCallBlock(tool_call_id="", tool_name="lookup", tool_kwargs={})
    converted = to_message(ChatMessage(role=MessageRole.ASSISTANT, blocks=[empty]))
    assert [call.id for call in converted.tool_calls or []] == [""]
    assert to_message(from_message(converted)).tool_calls == converted.tool_calls


def test_non_text_blocks_are_refused_by_name():
    image = ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(url="http://127.0.0.1/x.png")])
    with pytest.raises(ConfigError, match="'image' block"):
        to_message(image)


def test_documents_survive_nodes_and_back():
    documents = [
        Document(id="d1", text="Oslo is wet.", metadata={"page": 3}, score=0.8, source="guide.pdf"),
        Document(id="d2", text="Pinned.", pinned=True),
    ]
    assert [to_document(from_document(d)) for d in documents] == documents
    node = from_document(documents[1]).node
    assert "ctxproto_pinned" not in node.get_content(metadata_mode="llm")  # type: ignore[arg-type]

    retrieved = NodeWithScore(node=TextNode(id_="n", text="t", metadata={"k": "v"}), score=0.5)
    back = from_document(to_document(retrieved))
    assert (back.node.node_id, back.node.get_content(), back.node.metadata, back.score) == (
        "n",
        "t",
        {"k": "v"},
        0.5,
    )


FACTS = [
    "The Hurtigruten coastal ferry leaves Bergen every evening at 20:30.",
    "Bergen gets about 240 days of rain a year, more than any other Norwegian city.",
    "The Flåm railway climbs 863 metres in twenty kilometres.",
    "Cloudberries grow on marshland in northern Norway and ripen in late July.",
    "The Bergen fish market opens at 07:00 from June to August.",
]


@pytest.mark.models
def test_postprocessor_in_a_query_engine_over_a_vector_index(embedder):
    index = VectorStoreIndex.from_documents(
        [LlamaDocument(text=fact, id_=f"fact{i}") for i, fact in enumerate(FACTS)],
        embed_model=CtxprotoEmbedding(),
    )
    backend = ScriptedBackend(lambda messages: "The ferry leaves at 20:30.")
    postprocessor = CtxprotoNodePostprocessor(
        relevance_filter=RelevanceFilter(min_score=0.3), max_tokens=40
    )
    engine = index.as_query_engine(
        llm=CtxprotoLLM(backend=backend),
        similarity_top_k=5,
        node_postprocessors=[postprocessor],
    )

    response = engine.query("When does the coastal ferry leave Bergen?")

    assert str(response) == "The ferry leaves at 20:30."
    kept = [n.node.get_content() for n in response.source_nodes]
    assert FACTS[0] in kept
    assert FACTS[2] not in kept and FACTS[3] not in kept
    prompt = "\n".join(m["content"] for m in backend.requests[0].messages)
    assert FACTS[0] in prompt
    assert FACTS[3] not in prompt


def test_packing_keeps_pinned_nodes_and_fills_the_rest_by_relevance(counter):
    pinned = from_document(Document(id="p", text=FACTS[1], pinned=True, score=0.0))
    nodes = [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=fact), score=score)
        for i, (fact, score) in enumerate([(FACTS[2], 0.2), (FACTS[0], 0.9), (FACTS[3], 0.5)])
    ]
    budget = counter.count(FACTS[1]) + counter.count(FACTS[0]) + 1
    out = CtxprotoNodePostprocessor(max_tokens=budget).postprocess_nodes(
        [*nodes, pinned], QueryBundle("ferry")
    )
    assert [n.node.node_id for n in out] == ["p", "n1"]
    assert out[1] is not nodes[1] and out[1].node is nodes[1].node  # unchanged text: same node


def test_packing_counts_the_metadata_the_llm_reads_with_each_node(counter):
    """A file's name and path go into the prompt with its node (MetadataMode.LLM, as a
    response synthesizer writes nodes): counted on the text alone, the nodes packed
    into 70 tokens put 147 in the prompt."""

    def node(i: int, fact: str) -> TextNode:
        path = f"/srv/knowledge/norway/fact_{i}.md"
        return TextNode(
            id_=f"n{i}", text=fact, metadata={"file_name": f"fact_{i}.md", "file_path": path}
        )

    nodes = [NodeWithScore(node=node(i, f), score=1.0 - i / 10) for i, f in enumerate(FACTS)]
    pinned = from_document(
        Document(id="p", text=FACTS[1], pinned=True, metadata={"file_name": "pin.md"})
    )
    budget = 70

    out = CtxprotoNodePostprocessor(max_tokens=budget).postprocess_nodes([*nodes, pinned])

    assert [n.node.node_id for n in out][:2] == ["p", "n0"]
    assert sum(counter.count(n.node.get_content(MetadataMode.LLM)) for n in out) <= budget


def test_pinned_nodes_come_first_without_a_budget_too():
    pinned = from_document(Document(id="p", text=FACTS[1], pinned=True, score=0.0))
    nodes = [NodeWithScore(node=TextNode(id_=f"n{i}", text=FACTS[i]), score=0.9) for i in (0, 2)]
    out = CtxprotoNodePostprocessor().postprocess_nodes([*nodes, pinned], QueryBundle("ferry"))
    assert [n.node.node_id for n in out] == ["p", "n0", "n2"]  # the rest in their order in


def test_a_node_retrieved_twice_keeps_each_retrievals_score(counter):
    node = TextNode(id_="n0", text=FACTS[0])
    other = TextNode(id_="n1", text=FACTS[2])
    nodes = [
        NodeWithScore(node=node, score=0.9),
        NodeWithScore(node=other, score=0.5),
        NodeWithScore(node=node, score=0.2),  # the same node again, from another retriever
    ]
    out = CtxprotoNodePostprocessor().postprocess_nodes(nodes)
    assert [(n.node.node_id, n.score) for n in out] == [("n0", 0.9), ("n1", 0.5), ("n0", 0.2)]
    budget = counter.count(FACTS[0]) + 1  # room for one of them: the best
    packed = CtxprotoNodePostprocessor(max_tokens=budget).postprocess_nodes(nodes)
    assert [(n.node.node_id, n.score) for n in packed] == [("n0", 0.9)]


@pytest.mark.models
@pytest.mark.slow
def test_postprocessor_compresses_nodes_and_keeps_their_facts(embedder):
    nodes = [
        NodeWithScore(
            node=TextNode(id_=f"n{i}", text=" ".join(FACTS[i:] + FACTS[:i]), metadata={"i": i}),
            score=1.0 - i / 10,
        )
        for i in range(2)
    ]
    postprocessor = CtxprotoNodePostprocessor(
        token_compressor=TokenCompressor(rate=0.5, device="cpu")
    )
    out = postprocessor.postprocess_nodes(nodes, QueryBundle("When does the ferry leave?"))

    assert [n.node.node_id for n in out] == ["n0", "n1"]
    assert [n.score for n in out] == [1.0, 0.9]
    for before, after in zip(nodes, out, strict=True):
        text = after.node.get_content()
        assert len(text) < len(before.node.get_content())
        assert "20:30" in text
        assert after.node.metadata == before.node.metadata
    assert nodes[0].node.get_content().startswith(FACTS[0])  # the input nodes are untouched


@pytest.mark.models
def test_memory_folds_old_turns_into_a_summary_per_tenant(tmp_path, embedder):
    store = SessionStateStore(tmp_path / "history")
    summarizer = Summarizer(
        keep_turns=2, checkpoint_every=2, model=None, state_path=str(tmp_path / "summaries")
    )
    memory = SummaryChatMemory(
        store=store, session_id="s1", tenant_id="acme", summarizer=summarizer
    )
    memory.put(ChatMessage(role=MessageRole.USER, content="My order number is ORD-551203."))
    memory.put(ChatMessage(role=MessageRole.ASSISTANT, content="Noted."))
    for i in range(3):
        memory.put(ChatMessage(role=MessageRole.USER, content=f"Tell me fact {i}."))
        memory.put(ChatMessage(role=MessageRole.ASSISTANT, content=f"Fact {i} is dull."))

    messages = memory.get()

    assert messages[0].role == MessageRole.SYSTEM
    assert "ORD-551203" in (messages[0].content or "")
    assert [m.content for m in messages[1:]] == ["Tell me fact 2.", "Fact 2 is dull."]
    assert len(memory.get_all()) == 8
    other = SummaryChatMemory(
        store=store, session_id="s1", tenant_id="other", summarizer=summarizer
    )
    assert other.get_all() == []
    memory.reset()
    assert memory.get_all() == []


@pytest.mark.models
def test_memory_serves_a_chat_engine(tmp_path, embedder):
    from llama_index.core.chat_engine import SimpleChatEngine

    backend = ScriptedBackend(lambda messages: f"reply to {messages[-1]['content']}")
    memory = SummaryChatMemory(
        store=SessionStateStore(tmp_path / "history"),
        session_id="s1",
        summarizer=Summarizer(model=None, state_path=str(tmp_path / "summaries")),
    )
    engine = SimpleChatEngine.from_defaults(llm=CtxprotoLLM(backend=backend), memory=memory)

    engine.chat("My name is Ada.")
    answer = engine.chat("What is my name?")

    assert str(answer) == "reply to What is my name?"
    assert [m["content"] for m in backend.requests[1].messages] == [
        "My name is Ada.",
        "reply to My name is Ada.",
        "What is my name?",
    ]
    assert len(memory.get_all()) == 4


def test_memory_refuses_a_summarizer_sharing_the_history_folder(tmp_path):
    store = SessionStateStore(tmp_path)
    with pytest.raises(ConfigError, match=r"summarizer\.state_path"):
        SummaryChatMemory(
            store=store,
            session_id="s1",
            summarizer=Summarizer(model=None, state_path=str(tmp_path)),
        )


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (
            lambda tmp: CtxprotoLLM(backend=None, generation={"max_tokens": 3}),
            "generation.max_tokens",
        ),
        (lambda tmp: CtxprotoLLM(backend=None, generation={"stop": [""]}), "generation.stop"),
        (lambda tmp: CtxprotoLLM(backend=None, context_window=0), "context_window"),
        (
            lambda tmp: SummaryChatMemory(
                store=SessionStateStore(tmp), session_id="s1", summarizer={"keep_turns": -1}
            ),
            "summarizer.keep_turns",
        ),
        (
            lambda tmp: CtxprotoNodePostprocessor(relevance_filter={"bogus": 1}),
            "relevance_filter.bogus",
        ),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_its_key(tmp_path, build, key):
    with pytest.raises(ConfigError) as raised:
        build(tmp_path)
    assert raised.value.key == key


def test_a_generation_dict_is_read_as_generation_params():
    backend = ScriptedBackend(lambda messages: "one two three")
    llm = CtxprotoLLM(backend=backend, generation={"max_new_tokens": 2})
    assert llm.complete("count").text == "one two"


def test_llm_metadata_leaves_room_for_the_answer_generation_asks_for():
    from llama_index.core.indices.prompt_helper import PromptHelper

    backend = ScriptedBackend(lambda messages: "ok")
    llm = CtxprotoLLM(backend=backend, generation={"max_new_tokens": 1024})
    assert (llm.metadata.context_window, llm.metadata.num_output) == (8192, 1024)
    assert PromptHelper.from_llm_metadata(llm.metadata).num_output == 1024
    assert CtxprotoLLM(backend=backend).metadata.num_output == 256  # GenerationParams' default
    assert CtxprotoLLM(backend=backend, num_output=64).metadata.num_output == 64
    assert CtxprotoLLM(backend=backend).metadata.is_chat_model


def test_llm_streams_a_completion_through_the_backend():
    llm = CtxprotoLLM(backend=ScriptedBackend(["one two three"]))
    responses = list(llm.stream_complete("count"))
    assert responses[-1].text == "one two three"
    assert "".join(r.delta or "" for r in responses) == "one two three"


def test_llm_streams_a_chat_as_chat_messages_roles_and_all():
    backend = ScriptedBackend(["Hello there"])
    llm = CtxprotoLLM(backend=backend)
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be terse."),
        ChatMessage(role=MessageRole.USER, content="Hi?"),
    ]
    responses = list(llm.stream_chat(messages))
    assert responses[-1].message.content == "Hello there"
    assert [(m["role"], m["content"]) for m in backend.requests[-1].messages] == [
        ("system", "Be terse."),
        ("user", "Hi?"),
    ]


def test_llm_async_calls_leave_the_event_loop_free():
    import time

    def slow(messages):
        time.sleep(0.5)
        return "done"

    llm = CtxprotoLLM(backend=ScriptedBackend(slow))
    question = [ChatMessage(role=MessageRole.USER, content="Hi?")]

    async def run() -> tuple[str, int, list[str]]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        answer = await llm.achat(question)
        streamed = [r.delta async for r in await llm.astream_chat(question)]
        ticker.cancel()
        return str(answer.message.content), ticks, streamed

    answer, ticks, streamed = asyncio.run(run())
    assert answer == "done" and "".join(streamed) == "done"
    assert ticks >= 20  # the loop ran on while the backend worked


def test_llm_stream_cancelled_mid_token_is_cancelled_and_stops_the_backend():
    import time

    def slow(messages):
        time.sleep(0.3)
        return "late answer"

    backend = ScriptedBackend(slow)
    llm = CtxprotoLLM(backend=backend)

    async def run() -> None:
        async def consume() -> None:
            async for _ in await llm.astream_chat([ChatMessage(role="user", content="Hi?")]):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)  # the first token is still being made in a worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())  # waits for the worker thread, which closes the stream on its way out
    assert backend.cancelled == 1


def test_embedding_async_text_methods_run_in_a_worker_thread_a_batch_at_once():
    import threading

    import numpy as np

    calls: list[tuple[int, bool]] = []

    class Recording:
        def embed(self, texts: Any) -> Any:
            calls.append((len(texts), threading.current_thread() is threading.main_thread()))
            return np.zeros((len(texts), 3))

    embedding = CtxprotoEmbedding()
    embedding._model = Recording()  # type: ignore[assignment]

    async def run() -> None:
        await embedding.aget_text_embedding("one")
        await embedding.aget_text_embedding_batch(["a", "b", "c"])

    asyncio.run(run())
    assert calls == [(1, False), (3, False)]


def test_a_synchronous_llamaindex_call_leaves_no_unclosed_event_loop_behind():
    """llama-index estimates tokens through ``asyncio_run`` on the thread's event loop
    (conftest's ``own_event_loop``); once another ``asyncio.run`` has replaced that
    loop, collecting garbage must find no loop or socket left open."""
    assert from_message(Message(role="user", content="How many tokens?")).estimate_tokens() >= 0
    asyncio.run(asyncio.sleep(0))  # as a later test would: the thread's loop is replaced
    unclosed: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = unclosed.append  # ResourceWarnings raised in __del__ land here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert [str(u.exc_value) for u in unclosed] == []


def test_each_llm_call_reaches_callback_handlers_once():
    from llama_index.core.callbacks import CallbackManager, CBEventType
    from llama_index.core.callbacks.base_handler import BaseCallbackHandler

    class Starts(BaseCallbackHandler):
        def __init__(self) -> None:
            super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
            self.llm = 0

        def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kw):
            self.llm += event_type == CBEventType.LLM
            return event_id

        def on_event_end(self, event_type, payload=None, event_id="", **kw) -> None:
            pass

        def start_trace(self, trace_id=None) -> None:
            pass

        def end_trace(self, trace_id=None, trace_map=None) -> None:
            pass

    starts = Starts()
    llm = CtxprotoLLM(
        backend=ScriptedBackend(lambda messages: "ok"),
        callback_manager=CallbackManager([starts]),
    )
    question = [ChatMessage(role=MessageRole.USER, content="Hi?")]

    async def run_async() -> None:
        await llm.achat(question)
        await llm.acomplete("Hi?")
        [r async for r in await llm.astream_chat(question)]
        [r async for r in await llm.astream_complete("Hi?")]

    llm.chat(question)
    llm.complete("Hi?")
    list(llm.stream_chat(question))
    list(llm.stream_complete("Hi?"))
    asyncio.run(run_async())
    assert starts.llm == 8  # one event per call: the async ones once, not twice
