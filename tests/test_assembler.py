from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxproto import Assembler, Budget, BudgetError, ChatRequest, Context, Document, Message

SYSTEM = "You are a support assistant. Follow the refund policy exactly. " * 5


def chat(turns: int, *, words: int = 20) -> Context:
    history = []
    for i in range(turns):
        history.append(Message(role="user", content=f"question {i} " + "word " * words))
        history.append(Message(role="assistant", content=f"answer {i} " + "text " * words))
    return Context(
        system_prompt=SYSTEM,
        history=history,
        query=Message(role="user", content="What is my order number?"),
    )


def test_sections_follow_stability_order(counter):
    context = chat(2).model_copy(
        update={"summary": "Earlier: order LH-1.", "documents": [Document(id="d", text="Policy")]}
    )
    sections = Assembler(counter=counter).sections(context)
    kinds = [s.kind for s in sections]
    assert kinds == [
        "system",
        "memory",
        "documents",
        "history",
        "history",
        "history",
        "history",
        "query",
    ]
    assert [s.stability for s in sections] == sorted(s.stability for s in sections)


def test_chat_rendering_merges_leading_context_into_one_system_message(counter):
    context = chat(1).model_copy(
        update={"summary": "Earlier: order LH-1.", "documents": [Document(id="d", text="Policy")]}
    )
    prompt = Assembler(counter=counter).assemble(context)
    assert [m["role"] for m in prompt.messages] == ["system", "user", "assistant", "user"]
    system = prompt.messages[0]["content"]
    assert system.startswith(SYSTEM)
    assert system.index("LH-1") < system.index("[d] Policy")


def test_budget_drops_oldest_turns_first_and_keeps_pinned(counter):
    budget = Budget(max_prompt_tokens=250)
    prompt = Assembler(budget, counter=counter).assemble(chat(10))
    assert prompt.prompt_tokens <= 250
    assert prompt.messages[0]["content"] == SYSTEM
    assert prompt.messages[-1]["content"] == "What is my order number?"
    kept = [m["content"] for m in prompt.messages[1:-1]]
    assert kept and kept[-1].startswith("answer 9")
    assert prompt.dropped["history"] > 0


def test_pinned_content_over_budget_says_by_how_much(counter):
    with pytest.raises(BudgetError) as info:
        Assembler(Budget(max_prompt_tokens=20), counter=counter).assemble(chat(1))
    assert info.value.overflow_tokens > 0
    assert f"{info.value.overflow_tokens} more than the budget of 20" in str(info.value)


def test_pinned_history_message_survives(counter):
    context = chat(10)
    history = list(context.history)
    history[0] = history[0].model_copy(update={"pinned": True})
    prompt = Assembler(Budget(max_prompt_tokens=250), counter=counter).assemble(
        context.model_copy(update={"history": history})
    )
    assert any(m["content"].startswith("question 0") for m in prompt.messages)


def test_tool_call_is_dropped_together_with_its_result(counter):
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "weather? " + "pad " * 50},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "4 degrees " + "x " * 40},
                {"role": "assistant", "content": "It is 4 degrees."},
                {"role": "user", "content": "thanks"},
            ]
        }
    )
    context = request.to_context()
    full = Assembler(counter=counter).assemble(context).prompt_tokens
    for limit in range(20, full + 1, 7):
        try:
            prompt = Assembler(Budget(max_prompt_tokens=limit), counter=counter).assemble(context)
        except BudgetError:
            continue
        roles = [m["role"] for m in prompt.messages]
        assert ("tool" in roles) == any(m.get("tool_calls") for m in prompt.messages)
        assert prompt.prompt_tokens <= limit


def test_section_caps_limit_documents(counter):
    docs = [Document(id=str(i), text="policy text " * 30) for i in range(5)]
    context = chat(1).model_copy(update={"documents": docs})
    budget = Budget(max_prompt_tokens=5000, section_caps={"documents": 130})
    prompt = Assembler(budget, counter=counter).assemble(context)
    kept = [s for s in prompt.sections if s.kind == "documents"]
    assert sum(s.tokens for s in kept) <= 130
    assert [s.text[:3] for s in kept] == ["[0]", "[1]"]


def test_a_repeated_document_goes_from_the_end_and_the_order_stays(counter):
    """Documents go last-listed first; a copy of an earlier one went from the front
    (removed by equality, not position), and the best-ranked document moved behind
    the others."""
    best = Document(id="best", text="The warranty lasts two years.")
    other = Document(id="other", text="Returns are free within 30 days.")
    context = Context(
        documents=[best, other, best.model_copy()],
        query=Message(role="user", content="How long is the warranty?"),
    )
    fits_two = Assembler(counter=counter).assemble(
        context.model_copy(update={"documents": [best, other]})
    )
    budget = Budget(max_prompt_tokens=fits_two.prompt_tokens)
    prompt = Assembler(budget, counter=counter).assemble(context)
    kept = [s.text for s in prompt.sections if s.kind == "documents"]
    assert kept == [f"[best] {best.text}", f"[other] {other.text}"]
    assert prompt.dropped == {"documents": 1}


def test_cutting_thousands_of_small_pieces_to_a_small_budget_is_linear(counter, monkeypatch):
    """Each piece dropped used to be found again among all those left, by grouping
    the history anew and comparing sections for equality: cutting 6,000 documents
    to a small budget took 17 s, 6,000 history messages 7 s. Counted in work done,
    not in seconds: the history is grouped a fixed number of times and no section
    is compared with another, however many pieces go."""
    from ctxproto.prompt import Section
    from ctxproto.text.turns import group_blocks

    groupings = comparisons = 0
    section_eq = Section.__eq__

    def counted_group_blocks(messages):
        nonlocal groupings
        groupings += 1
        return group_blocks(messages)

    def counted_eq(self, other):
        nonlocal comparisons
        comparisons += 1
        return section_eq(self, other)

    monkeypatch.setattr("ctxproto.assembler.group_blocks", counted_group_blocks)
    monkeypatch.setattr(Section, "__eq__", counted_eq)
    documents = [Document(id=f"d{i}", text=f"note {i}") for i in range(1500)]
    context = chat(750, words=0).model_copy(update={"documents": documents})
    prompt = Assembler(Budget(max_prompt_tokens=200), counter=counter).assemble(context)
    assert prompt.prompt_tokens <= 200
    kept = [s.text for s in prompt.sections if s.kind == "documents"]
    assert kept == [f"[d{i}] note {i}" for i in range(len(kept))]
    assert prompt.dropped == {"history": 1500, "documents": 1500 - len(kept)}
    assert groupings <= 10
    assert comparisons == 0


def test_documents_with_the_query_keep_the_history_prefix(counter):
    assembler = Assembler(counter=counter, documents_position="query")
    turn_1 = chat(2).model_copy(update={"documents": [Document(id="kb1", text="Reset: hold 10 s")]})
    prompt_1 = assembler.assemble(turn_1)
    assert prompt_1.messages[0]["content"] == SYSTEM
    last = prompt_1.messages[-1]["content"]
    assert last.startswith("## Reference documents\n[kb1] Reset: hold 10 s")
    assert last.endswith("## Question\nWhat is my order number?")
    turn_2 = turn_1.model_copy(
        update={
            "history": [*turn_1.history, turn_1.query, Message(role="assistant", content="LH-1")],
            "query": Message(role="user", content="How do I reset?"),
            "documents": [Document(id="kb2", text="Other text")],
        }
    )
    prompt_2 = assembler.assemble(turn_2)
    # Everything before turn 1's question is unchanged, although the documents changed.
    assert prompt_2.messages[:-3] == prompt_1.messages[:-1]
    budgeted = Assembler(Budget(max_prompt_tokens=140), counter=counter, documents_position="query")
    cut = budgeted.assemble(turn_2)
    assert cut.prompt_tokens <= 140
    assert cut.messages[-1]["content"].endswith("How do I reset?")


@pytest.mark.parametrize(
    ("query", "question"),
    [
        ({"role": "user", "content": [{"type": "text", "text": "Which fuse?"}]}, "Which fuse?"),
        ({"role": "user"}, ""),
    ],
)
def test_documents_join_a_query_of_text_parts_or_of_no_content(counter, query, question):
    request = ChatRequest.model_validate(
        {"messages": [query], "documents": [{"id": "kb", "text": "The T9 takes a 13 A fuse."}]}
    )
    prompt = Assembler(counter=counter, documents_position="query").assemble(request.to_context())
    assert prompt.messages[-1]["content"] == (
        "## Reference documents\n[kb] The T9 takes a 13 A fuse.\n\n## Question\n" + question
    )


def test_a_budget_cut_never_leaves_a_reply_without_its_question(counter):
    context = chat(4, words=3)
    full = Assembler(counter=counter).assemble(context).prompt_tokens
    cuts = 0
    for limit in range(full - 60, full + 1):
        prompt = Assembler(Budget(max_prompt_tokens=limit), counter=counter).assemble(context)
        roles = [m["role"] for m in prompt.messages[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"], limit
        cuts += len(roles) < 9
    assert cuts > 0


def tool_result_request(result_words: int) -> Context:
    """A request that ends on a tool result: no query, the question is in the history."""
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    return ChatRequest.from_openai(
        [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Is it cold in Oslo? " * 20},
            {"role": "assistant", "content": "It is."},
            {"role": "user", "content": "And in Paris?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "Paris: 21C " * result_words},
        ]
    ).to_context()


def test_a_request_ending_on_a_tool_result_keeps_its_question_within_the_budget(counter):
    """The open question is pinned as a query is: a tight budget used to drop every
    turn and send the system prompt alone, and the model answered nothing asked."""
    context = tool_result_request(30)
    assert context.query is None
    prompt = Assembler(Budget(max_prompt_tokens=100), counter=counter).assemble(context)
    assert [m.get("content") for m in prompt.messages] == ["You are helpful.", "And in Paris?"]
    assert prompt.dropped == {"history": 4}
    with pytest.raises(BudgetError):
        Assembler(Budget(max_prompt_tokens=12), counter=counter).assemble(context)


def test_plain_text_rendering_is_counted_exactly(counter):
    prompt = Assembler(Budget(max_prompt_tokens=300), counter=counter, render="text").assemble(
        chat(6)
    )
    assert prompt.text.startswith("System: " + SYSTEM)
    assert prompt.text.endswith("User: What is my order number?\n\nAssistant:")
    assert prompt.prompt_tokens == counter.count(prompt.text) <= 300


@pytest.mark.parametrize("render", ["chat", "text"])
def test_prefix_is_byte_identical_across_turns(counter, render):
    """Turn 2's prompt starts with turn 1's whole prompt: only new bytes are appended."""
    assembler = Assembler(Budget(max_prompt_tokens=100_000), counter=counter, render=render)
    turn_1 = chat(3).model_copy(update={"summary": "User is Priya, order LH-48213-QX."})
    answer = Message(role="assistant", content="Your order is LH-48213-QX.")
    turn_2 = turn_1.model_copy(
        update={
            "history": [*turn_1.history, turn_1.query, answer],
            "query": Message(role="user", content="Thanks! When will it ship?"),
        }
    )
    first = assembler.assemble(turn_1)
    second = assembler.assemble(turn_2)
    assert second.text.startswith(first.text)
    assert second.messages[: len(first.messages)] == first.messages
    # Content that changed earlier in the prompt does break the prefix, where it changed.
    changed = assembler.assemble(turn_2.model_copy(update={"summary": "User is Priya."}))
    assert not changed.text.startswith(first.text)


@pytest.mark.models
def test_chat_template_renders_and_counts_with_the_model_tokenizer(lm_tokenizer):
    from ctxproto.tokens import HuggingFaceCounter

    def template(messages):
        return lm_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    counter = HuggingFaceCounter(lm_tokenizer)
    assembler = Assembler(Budget(max_prompt_tokens=200), counter=counter, chat_template=template)
    prompt = assembler.assemble(chat(8))
    assert prompt.text.startswith("<|im_start|>system\n" + SYSTEM)
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert prompt.prompt_tokens == counter.count(prompt.text) <= 200
    answer = Message(role="assistant", content="Sure.")
    context = chat(2)
    follow_up = context.model_copy(
        update={
            "history": [*context.history, context.query, answer],
            "query": Message(role="user", content="Next?"),
        }
    )
    unbounded = Assembler(counter=counter, chat_template=template)
    assert unbounded.assemble(follow_up).text.startswith(unbounded.assemble(context).text)


@pytest.mark.models
def test_pipeline_with_a_model_tokenizer_uses_its_chat_template(lm_tokenizer):
    from ctxproto import Pipeline

    pipeline = Pipeline.from_dict(
        {"tokenizer": "hf:default", "budget": {"max_prompt_tokens": 300}, "stages": []}
    )
    result = pipeline.run(chat(10))
    assert result.prompt is not None
    assert result.prompt.text.startswith("<|im_start|>system\n")
    assert result.prompt_tokens == len(lm_tokenizer.encode(result.prompt.text)) <= 300


@pytest.mark.models
def test_a_tool_call_without_text_renders_in_the_pipeline_as_the_runtime_renders_it(
    lm_tokenizer,
):
    """A model tokenizer's template read every message's content: an assistant message
    that only calls a tool raised jinja's UndefinedError in the pipeline, before the
    runtime (which renders it) was reached; and the budget must count what it sends."""
    from ctxproto import Pipeline
    from ctxproto.runtime.chat_template import render_chat

    pipeline = Pipeline.from_dict({"tokenizer": "hf:default", "stages": []})
    call = {"id": "call-1", "type": "function", "function": {"name": "firmware_version"}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Which firmware is my hub on?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call-1", "content": "4.2.1"},
    ]
    result = pipeline.run_messages(messages)
    assert result.prompt is not None
    assert "firmware_version" in result.prompt.text
    sent = render_chat(lm_tokenizer, result.prompt.messages)
    assert lm_tokenizer.decode(sent) == result.prompt.text


roles = st.sampled_from(["user", "assistant"])
texts = st.text(min_size=0, max_size=200)
messages = st.builds(
    lambda r, t, p: Message(role=r, content=t, pinned=p), roles, texts, st.booleans()
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(messages, max_size=25),
    system=st.text(max_size=300),
    query=st.text(max_size=200),
    documents=st.lists(st.text(max_size=300), max_size=5),
    limit=st.integers(min_value=1, max_value=1500),
    render=st.sampled_from(["chat", "text"]),
)
def test_property_budget_holds_and_pinned_survives(
    counter, history, system, query, documents, limit, render
):
    context = Context(
        system_prompt=system,
        history=history,
        query=Message(role="user", content=query),
        documents=[Document(id=str(i), text=t) for i, t in enumerate(documents)],
    )
    assembler = Assembler(Budget(max_prompt_tokens=limit), counter=counter, render=render)
    try:
        prompt = assembler.assemble(context)
    except BudgetError as exc:
        pinned = Assembler(counter=counter, render=render).assemble(
            context.model_copy(
                update={"history": [m for m in history if m.pinned], "documents": []}
            )
        )
        assert pinned.prompt_tokens > limit
        assert exc.overflow_tokens == pinned.prompt_tokens - limit
        return
    assert prompt.prompt_tokens <= limit
    rendered = [s.message for s in prompt.sections if s.message is not None]
    for message in history:
        if message.pinned:
            assert any(m is message or m == message for m in rendered)
    assert prompt.sections[-1].kind == "query"
    if system:
        assert prompt.sections[0].text == system
