"""The LangChain adapter: message round-trips, the runnable in a real LCEL chain, the history."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import numpy as np
import pytest
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableConfig, RunnableLambda
from pydantic import PrivateAttr

from ctxproto import (
    Budget,
    ConfigError,
    Context,
    Message,
    Pipeline,
    RecencyWindow,
    Stage,
    StoreError,
    UsageError,
)
from ctxproto.integrations.langchain import (
    CtxprotoChatModel,
    PipelineRunnable,
    SessionMessageHistory,
    from_message,
    to_message,
)
from ctxproto.messages import FunctionCall, ToolCall
from ctxproto.runtime import ScriptedBackend
from ctxproto.session import ChatSession
from ctxproto.stages import Transformed
from ctxproto.stores.session_state import SessionStateStore
from ctxproto.tokens import TokenCounter

MESSAGES = [
    Message(role="system", content="You are terse.", pinned=True),
    Message(role="developer", content="Answer in English."),
    Message(role="user", content="Weather in Oslo and Bergen?", name="ana"),
    Message(
        role="assistant",
        content=None,
        tool_calls=[
            ToolCall(id="c1", function=FunctionCall(name="weather", arguments='{"city": "Oslo"}')),
            ToolCall(id="c2", function=FunctionCall(name="weather", arguments='{"city":"Bergen"}')),
        ],
    ),
    Message(role="tool", content="4 C, rain", tool_call_id="c1", name="weather"),
    Message(role="tool", content="7 C, sun", tool_call_id="c2"),
    Message(role="assistant", content="Oslo 4 C and rain; Bergen 7 C and sun."),
    Message(
        role="assistant",
        content="",
        tool_calls=[
            ToolCall(id="c3", function=FunctionCall(name="broken", arguments="{not json")),
        ],
    ),
    Message(role="tool", content="error", tool_call_id="c3"),
]


def test_ctxproto_messages_survive_langchain_and_back():
    assert [to_message(from_message(m)) for m in MESSAGES[:7]] == MESSAGES[:7]
    broken = to_message(from_message(MESSAGES[7]))
    assert broken.tool_calls == MESSAGES[7].tool_calls  # the raw invalid arguments kept
    assert broken.content is None


def test_tool_calls_become_langchain_tool_calls_and_results():
    ai = from_message(MESSAGES[3])
    assert isinstance(ai, AIMessage)
    assert [(c["id"], c["name"], c["args"]) for c in ai.tool_calls] == [
        ("c1", "weather", {"city": "Oslo"}),
        ("c2", "weather", {"city": "Bergen"}),
    ]
    result = from_message(MESSAGES[4])
    assert isinstance(result, ToolMessage)
    assert (result.tool_call_id, result.content, result.name) == ("c1", "4 C, rain", "weather")
    invalid = from_message(MESSAGES[7])
    assert isinstance(invalid, AIMessage)
    assert invalid.invalid_tool_calls[0]["args"] == "{not json"


def test_langchain_messages_survive_ctxproto_and_back():
    originals: list[BaseMessage] = [
        SystemMessage("Be brief."),
        HumanMessage("Look up order 7", name="bo"),
        AIMessage("", tool_calls=[{"id": "t1", "name": "orders", "args": {"id": 7}}]),
        ToolMessage("shipped", tool_call_id="t1"),
        AIMessage("It shipped."),
    ]
    back = [from_message(to_message(m)) for m in originals]
    for original, returned in zip(originals, back, strict=True):
        assert type(returned) is type(original)
        assert (returned.content, returned.name) == (original.content, original.name)
    assert isinstance(back[2], AIMessage)
    assert [(c["id"], c["name"], c["args"]) for c in back[2].tool_calls] == [
        ("t1", "orders", {"id": 7})
    ]
    assert isinstance(back[3], ToolMessage)
    assert back[3].tool_call_id == "t1"


def test_edited_tool_call_args_win_over_the_stored_raw_string():
    ai = from_message(MESSAGES[3])
    assert isinstance(ai, AIMessage)
    ai.tool_calls[0]["args"] = {"city": "Tromsø"}
    call = to_message(ai).tool_calls[0]  # type: ignore[index]
    assert call.function.arguments == '{"city": "Tromsø"}'


def test_stored_tool_calls_that_are_no_list_hold_no_raw_arguments():
    """They raised a bare TypeError; the arguments come from ``args`` instead."""
    call = {"id": "t1", "name": "orders", "args": {"id": 7}}
    for stored in (5, "t1", {"t1": "{}"}):
        ai = AIMessage("", tool_calls=[call], additional_kwargs={"tool_calls": stored})
        assert to_message(ai).tool_calls == [
            ToolCall(id="t1", function=FunctionCall(name="orders", arguments='{"id": 7}'))
        ]


def test_non_text_content_is_refused_by_name():
    image = HumanMessage([{"type": "image_url", "image_url": {"url": "data:,"}}])
    with pytest.raises(ConfigError, match="'image_url' content block"):
        to_message(image)
    anonymous = AIMessage("", tool_calls=[{"id": None, "name": "lookup", "args": {}}])
    with pytest.raises(ConfigError, match="tool call 'lookup' has no id"):
        to_message(anonymous)
    unparsable = {"id": None, "name": "lookup", "args": "{", "error": None}
    anonymous = AIMessage("", invalid_tool_calls=[unparsable])  # converted to id ''
    with pytest.raises(ConfigError, match="tool call 'lookup' has no id"):
        to_message(anonymous)
    with pytest.raises(ConfigError, match="ChatMessage with role 'critic'"):
        to_message(ChatMessage(content="Too long.", role="critic"))


def test_the_pinned_flag_is_a_boolean_and_anything_else_is_refused():
    def pinned(value: object) -> bool:
        return to_message(HumanMessage("Hi.", additional_kwargs={"ctxproto_pinned": value})).pinned

    assert (pinned(True), pinned(False)) == (True, False)
    assert to_message(HumanMessage("Hi.")).pinned is False
    assert (pinned(None), pinned(np.bool_(True))) == (False, True)  # a store's null, numpy's
    for value in ("false", "true", 1):  # "false" read by its truth pinned the message
        with pytest.raises(ConfigError, match=r"\['ctxproto_pinned'\] is .*, not a boolean"):
            pinned(value)


def test_content_blocks_repeating_tool_calls_convert_from_the_tool_calls():
    call = {"id": "t1", "name": "orders", "args": {"id": 7}}
    anthropic = AIMessage(
        [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "t1", "name": "orders", "input": {"id": 7}},
        ],
        tool_calls=[call],
    )
    standard = AIMessage(
        [{"type": "tool_call", "id": "t1", "name": "orders", "args": {"id": 7}}],
        tool_calls=[call],
    )
    expected = [ToolCall(id="t1", function=FunctionCall(name="orders", arguments='{"id": 7}'))]
    assert to_message(anthropic).content == "Let me look."
    assert to_message(anthropic).tool_calls == expected
    assert to_message(standard).content is None
    assert to_message(standard).tool_calls == expected
    unmatched = AIMessage([{"type": "tool_use", "id": "t9", "name": "orders", "input": {}}])
    with pytest.raises(ConfigError, match="'tool_use' content block"):
        to_message(unmatched)  # a call that tool_calls does not hold is not dropped silently


def _conversation(turns: int) -> list[BaseMessage]:
    messages: list[BaseMessage] = [SystemMessage("You are a helpful assistant.")]
    for i in range(turns):
        messages += [HumanMessage(f"Question {i} about topic {i}?"), AIMessage(f"Answer {i}.")]
    return messages


def test_runnable_trims_inside_an_lcel_chain_ending_in_a_chat_model():
    backend = ScriptedBackend(lambda messages: f"seen {len(messages)} messages")
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{question}")]
    )
    trimmer = PipelineRunnable(
        Pipeline([RecencyWindow(max_turns=4)], Budget(max_prompt_tokens=500))
    )
    chain = prompt | trimmer | CtxprotoChatModel(backend=backend)

    answer = chain.invoke({"history": _conversation(10), "question": "And topic 9?"})

    sent = backend.requests[0].messages
    assert answer.content == f"seen {len(sent)} messages"
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert sent[1]["content"] == "Question 8 about topic 8?"
    assert sent[-1]["content"] == "And topic 9?"


def test_runnable_keeps_a_tool_call_with_its_results():
    trimmer = PipelineRunnable(Pipeline([RecencyWindow(max_turns=2, start_on_user=False)]))
    lean = trimmer.invoke([from_message(m) for m in MESSAGES[:7]] + [HumanMessage("Thanks!")])
    kinds = [type(m).__name__ for m in lean]
    assert kinds == [
        "SystemMessage",
        "AIMessage",
        "ToolMessage",
        "ToolMessage",
        "AIMessage",
        "HumanMessage",
    ]
    assert [to_message(m) for m in lean[1:5]] == MESSAGES[3:7]


def test_a_runnable_with_a_semantic_cache_is_refused_when_built(tmp_path):
    from ctxproto.stages.semantic_cache import SemanticCacheLookup

    cache = SemanticCacheLookup(path=str(tmp_path / "answers"))
    with pytest.raises(UsageError, match="ChatSession"):
        PipelineRunnable(Pipeline([cache, RecencyWindow(max_turns=2)]))


def test_a_runnable_given_no_human_message_says_so_naming_the_messages():
    """A request needs a question to answer; pydantic's own error left the tree."""
    runnable = PipelineRunnable(Pipeline([RecencyWindow(max_turns=2)]))
    with pytest.raises(ConfigError, match="needs a user message") as raised:
        runnable.invoke([AIMessage("Hello, how can I help?")])
    assert raised.value.key == "messages"


def test_runnable_returns_the_messages_it_kept_as_they_came():
    messages = _conversation(3)
    for i, message in enumerate(messages):
        message.id = f"m{i}"
    lean = PipelineRunnable(Pipeline([RecencyWindow(max_turns=2)])).invoke(
        [*messages, HumanMessage("Next?", id="q")]
    )
    assert [m.id for m in lean] == ["m0", "m5", "m6", "q"]
    assert lean[1] is messages[5]


class SessionRecorder(Stage):
    """Records the tenant and session each run's context carries, as a summarizer keys its state."""

    type_name: ClassVar[str] = "session_recorder"

    _seen: list[tuple[str, str | None]] = PrivateAttr(default_factory=list)

    @property
    def seen(self) -> list[tuple[str, str | None]]:
        return self._seen

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        self._seen.append((context.tenant_id, context.session_id))
        return Transformed(context)


def test_runnable_inside_another_runnable_reads_the_session_langchain_propagates():
    """Invoked with no config inside a RunnableLambda (a LangGraph node, a tool), the
    runnable gets its caller's config from LangChain; it ran as an anonymous session."""
    recorder = SessionRecorder()
    trimmer = PipelineRunnable(Pipeline([recorder]))
    config: RunnableConfig = {"configurable": {"session_id": "s2", "tenant_id": "acme"}}

    def in_node(messages: list[BaseMessage]) -> list[BaseMessage]:
        return trimmer.invoke(messages)

    async def in_async_node(messages: list[BaseMessage]) -> list[BaseMessage]:
        return await trimmer.ainvoke(messages)

    RunnableLambda(in_node).invoke([HumanMessage("Hi")], config)
    asyncio.run(RunnableLambda(in_async_node).ainvoke([HumanMessage("Hi")], config))
    trimmer.invoke([HumanMessage("Hi")])  # outside any run: the runnable's own

    assert recorder.seen == [("acme", "s2"), ("acme", "s2"), ("default", None)]


def test_runnable_returns_no_messages_for_none_as_trim_messages_does():
    from langchain_core.messages import trim_messages

    trimmer = PipelineRunnable(Pipeline([RecencyWindow(max_turns=2)]))
    assert trimmer.invoke([]) == [] == trim_messages([], max_tokens=10, token_counter=len)
    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("history")])
    assert (prompt | trimmer).invoke({"history": []}) == []


def test_chat_model_streams_and_counts_tokens_offline():
    model = CtxprotoChatModel(backend=ScriptedBackend(["one two three"]))
    chunks = list(model.stream([HumanMessage("count")]))
    assert "".join(str(c.content) for c in chunks) == "one two three"
    whole = sum(chunks[1:], chunks[0])
    assert whole.response_metadata["finish_reason"] == "stop"  # as invoke reports them
    assert whole.usage_metadata is not None and whole.usage_metadata["output_tokens"] > 0
    assert model.get_num_tokens("hello world") == 2
    stopped = CtxprotoChatModel(backend=ScriptedBackend(["one two three"]))
    assert stopped.invoke("count", stop=[" two"]).content == "one"


def test_a_bad_generation_dict_is_a_config_error_naming_its_key():
    backend = ScriptedBackend(["one"])
    assert CtxprotoChatModel(backend=backend, generation={"max_new_tokens": 3}).generation
    with pytest.raises(ConfigError) as raised:
        CtxprotoChatModel(backend=backend, generation={"max_tokens": 3})
    assert raised.value.key == "generation.max_tokens"
    with pytest.raises(ConfigError) as raised:
        CtxprotoChatModel(backend=backend, generation={"stop": [""]})
    assert raised.value.key == "generation.stop"


@pytest.mark.parametrize("generation", [None, {"max_new_tokens": 8}])
def test_an_empty_stop_string_is_refused_not_an_empty_answer(generation):
    backend = ScriptedBackend(lambda messages: "one two three")
    model = CtxprotoChatModel(backend=backend, generation=generation)
    for call in (
        lambda: model.invoke("count", stop=[""]),
        lambda: list(model.stream("count", stop=[" two", ""])),
    ):
        with pytest.raises(ConfigError) as raised:
            call()
        assert raised.value.key == "stop"
    assert backend.calls == 0
    assert model.bind(stop=[" two"]).invoke("count").content == "one"


def test_history_is_shared_with_chat_session_per_tenant(tmp_path):
    store = SessionStateStore(tmp_path / "history")
    history = SessionMessageHistory(store, "s1", tenant_id="acme")
    history.add_messages([HumanMessage("My name is Ada."), AIMessage("Hello Ada.")])

    session = ChatSession(
        Pipeline(),
        ScriptedBackend(["Ada."]),
        session_id="s1",
        tenant_id="acme",
        history_store=store,
    )
    session.ask("What is my name?")

    assert [m.content for m in history.messages] == [
        "My name is Ada.",
        "Hello Ada.",
        "What is my name?",
        "Ada.",
    ]
    assert SessionMessageHistory(store, "s1", tenant_id="other").messages == []
    history.clear()
    assert SessionStateStore(tmp_path / "history").get("acme", "s1") is None


def test_history_refuses_state_that_is_not_a_chat_history(tmp_path):
    store = SessionStateStore(tmp_path)
    store.put("default", "s1", {"version": 1, "folded": 4, "summary": "x", "history": [{"x": 1}]})
    with pytest.raises(StoreError, match="invalid message"):
        _ = SessionMessageHistory(store, "s1").messages
    with pytest.raises(ConfigError, match="session_id"):
        SessionMessageHistory(store, "")


def test_turns_written_at_once_to_one_history_all_stay(tmp_path):
    import threading

    store = SessionStateStore(tmp_path / "history")

    def write(worker: int) -> None:
        history = SessionMessageHistory(store, "busy")
        for turn in range(20):
            history.add_messages([HumanMessage(f"{worker}-{turn}"), AIMessage("ok")])

    writers = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    messages = SessionMessageHistory(store, "busy").messages
    assert len(messages) == 6 * 20 * 2  # a load then a save lost turns written between them
    asked = [m.content for m in messages if isinstance(m, HumanMessage)]
    assert sorted(asked) == sorted(f"{w}-{t}" for w in range(6) for t in range(20))


def test_an_llm_cache_never_answers_one_model_with_anothers_reply():
    from langchain_core.caches import InMemoryCache

    from ctxproto.runtime import OpenAIBackend

    cache = InMemoryCache()
    paris = ScriptedBackend(lambda messages: "Paris is the capital.")
    first = CtxprotoChatModel(backend=paris, cache=cache)
    other_backend = CtxprotoChatModel(backend=ScriptedBackend(["Rome."]), cache=cache)
    shorter = CtxprotoChatModel(backend=paris, generation={"max_new_tokens": 1}, cache=cache)
    assert first.invoke("Capital?").content == "Paris is the capital."
    assert first.invoke("Capital?").content == "Paris is the capital."
    assert paris.calls == 1  # the second answer came from the cache
    assert other_backend.invoke("Capital?").content == "Rome."
    assert shorter.invoke("Capital?").content == "Paris"
    server = OpenAIBackend("http://127.0.0.1:9", model="m")
    same_server = OpenAIBackend("http://127.0.0.1:9", model="m")
    assert (  # a server answers alike in any process, so a persistent cache may key by it
        CtxprotoChatModel(backend=server)._get_llm_string()
        == CtxprotoChatModel(backend=same_server)._get_llm_string()
        != CtxprotoChatModel(backend=OpenAIBackend("http://127.0.0.1:9"))._get_llm_string()
    )


def test_a_call_sets_generation_parameters_and_refuses_keys_it_cannot_honour():
    backend = ScriptedBackend(lambda messages: "one two three")
    model = CtxprotoChatModel(backend=backend, generation={"temperature": 0.5})
    assert model.invoke("count", max_new_tokens=1).content == "one"
    assert model.bind(max_new_tokens=2).invoke("count").content == "one two"
    assert "".join(str(c.content) for c in model.stream("count", max_new_tokens=1)) == "one"
    assert backend.requests[0].params.temperature == 0.5  # the model's own settings stay
    asked = backend.calls
    for call in (
        lambda: model.bind(tools=[{"type": "function", "function": {"name": "f"}}]).invoke("x"),
        lambda: model.invoke("count", response_format={"type": "json_object"}),
        lambda: list(model.stream("count", max_new_tokens=1, max_tokens=2)),
    ):
        with pytest.raises(ConfigError) as raised:
            call()  # ignored, each changed the answer without a word
        assert raised.value.key in ("tools", "response_format", "max_tokens")
    assert backend.calls == asked


def test_a_call_s_max_tokens_is_the_answer_length_as_on_other_chat_models():
    model = CtxprotoChatModel(backend=ScriptedBackend(lambda messages: "one two three"))
    assert model.invoke("count", max_tokens=1).content == "one"
    assert model.bind(max_completion_tokens=2).invoke("count").content == "one two"
    assert "".join(str(c.content) for c in model.stream("count", max_tokens=1)) == "one"
    assert model.invoke("count", max_tokens=2, max_new_tokens=2).content == "one two"


def test_tools_and_structured_output_are_refused_with_a_usage_error():
    from pydantic import BaseModel

    class City(BaseModel):
        name: str

    model = CtxprotoChatModel(backend=ScriptedBackend(["Oslo"]))
    with pytest.raises(UsageError, match="cannot call tools"):
        model.bind_tools([City])
    with pytest.raises(UsageError, match="cannot call tools"):
        model.with_structured_output(City)


def test_runnable_reads_a_string_as_one_human_message_as_a_chat_model_does():
    backend = ScriptedBackend(lambda messages: "Hello.")
    trimmer = PipelineRunnable(Pipeline([RecencyWindow(max_turns=2)]))
    assert [(type(m), m.content) for m in trimmer.invoke("Hi there")] == [
        (HumanMessage, "Hi there")
    ]
    (trimmer | CtxprotoChatModel(backend=backend)).invoke("Hi there")
    assert backend.requests[0].messages == [{"role": "user", "content": "Hi there"}]


def test_a_tool_call_and_its_result_with_an_empty_id_round_trip():
    """An empty id is an id: the call kept it, but its result came back with none, so the
    pair no longer matched and a request ending on it was refused."""
    call = ToolCall(id="", function=FunctionCall(name="lookup", arguments="{}"))
    messages = [
        Message(role="user", content="Order 7?"),
        Message(role="assistant", content=None, tool_calls=[call]),
        Message(role="tool", content="shipped", tool_call_id=""),
    ]
    assert [to_message(from_message(m)) for m in messages] == messages
