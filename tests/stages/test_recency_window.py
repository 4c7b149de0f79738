from ctxproto import ChatRequest, Context, Message, RecencyWindow


def conversation(turns: int) -> Context:
    history = []
    for i in range(turns):
        history.append(Message(role="user", content=f"q{i}"))
        history.append(Message(role="assistant", content=f"a{i}"))
    return Context(system_prompt="sys", history=history, query=Message(role="user", content="now"))


def test_keeps_newest_turns_by_count():
    result = RecencyWindow(max_turns=4).run(conversation(5))
    assert [m.content for m in result.context.history] == ["q3", "a3", "q4", "a4"]
    assert result.report.counters == {"dropped_messages": 6, "kept_messages": 4}
    assert result.report.tokens_out < result.report.tokens_in
    assert result.context.system_prompt == "sys"


def test_keeps_newest_turns_by_tokens(counter):
    context = conversation(6)
    per_message = counter.count_message(Message(role="user", content="q1"))
    result = RecencyWindow(max_tokens=per_message * 3).run(context, counter)
    # Three messages fit, but the window must start on a user turn: two remain.
    assert [m.content for m in result.context.history] == ["q5", "a5"]


def test_input_context_is_not_mutated():
    context = conversation(3)
    RecencyWindow(max_turns=1).run(context)
    assert len(context.history) == 6


def test_tool_call_never_separated_from_its_result():
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "4C"},
                {"role": "tool", "tool_call_id": "c1", "content": "windy"},
                {"role": "assistant", "content": "4C and windy"},
                {"role": "user", "content": "thanks"},
            ]
        }
    )
    context = request.to_context()
    for turns in range(0, 5):
        history = RecencyWindow(max_turns=turns, start_on_user=False).run(context).context.history
        roles = [m.role for m in history]
        if "tool" in roles:
            call = history[roles.index("tool") - 1]
            assert call.role == "assistant" and call.tool_calls
            assert roles.count("tool") == 2
        else:
            assert not any(m.tool_calls for m in history)
    # The whole tool block counts as one turn.
    two = RecencyWindow(max_turns=2, start_on_user=False).run(context).context.history
    assert [m.role for m in two] == ["assistant", "tool", "tool", "assistant"]


def test_pinned_messages_outside_the_window_survive():
    context = conversation(5)
    history = list(context.history)
    history[0] = history[0].model_copy(update={"pinned": True})
    result = RecencyWindow(max_turns=2).run(context.model_copy(update={"history": history}))
    assert [m.content for m in result.context.history] == ["q0", "q4", "a4"]


def test_no_limits_keeps_everything():
    context = conversation(4)
    assert RecencyWindow().run(context).context.history == context.history


def test_a_request_ending_on_a_tool_result_keeps_the_question_it_answers():
    """With no query, the window used to start on the tool call, and ``start_on_user``
    then dropped it too: the model got an empty history and nothing to answer."""
    context = ChatRequest.from_openai(
        [
            {"role": "user", "content": "Is it cold in Oslo?"},
            {"role": "assistant", "content": "It is."},
            {"role": "user", "content": "And in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "function": {"name": "weather", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "Paris: 21C"},
        ]
    ).to_context()
    assert context.query is None
    history = RecencyWindow(max_turns=1).run(context).context.history
    assert [m.content for m in history] == ["And in Paris?", None, "Paris: 21C"]
    # Outside the limits, as a query would be: with no room, the question alone stays.
    alone = RecencyWindow(max_turns=0).run(context).context.history
    assert [m.content for m in alone] == ["And in Paris?"]


def test_the_newest_tool_results_stay_with_their_question_when_an_earlier_call_goes():
    call = {"name": "weather", "arguments": "{}"}
    context = ChatRequest.from_openai(
        [
            {"role": "user", "content": "Is it cold in Oslo?"},
            {"role": "assistant", "content": "It is."},
            {"role": "user", "content": "And in Paris and Rome?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "function": call}]},
            {"role": "tool", "tool_call_id": "c1", "content": "Paris: 21C"},
            {"role": "assistant", "tool_calls": [{"id": "c2", "function": call}]},
            {"role": "tool", "tool_call_id": "c2", "content": "Rome: 25C"},
        ]
    ).to_context()
    history = RecencyWindow(max_turns=1).run(context).context.history
    assert [m.content for m in history] == ["And in Paris and Rome?", None, "Rome: 25C"]


def test_a_pinned_question_inside_the_window_keeps_its_answer():
    context = conversation(3)
    history = list(context.history)
    history[2] = history[2].model_copy(update={"pinned": True})  # q1
    pinned = context.model_copy(update={"history": history})
    kept = RecencyWindow(max_turns=3).run(pinned).context.history
    assert [m.content for m in kept] == ["q1", "a1", "q2", "a2"]
    # Out of the window's reach, the answer goes and the pinned question stays alone.
    assert [m.content for m in RecencyWindow(max_turns=1).run(pinned).context.history] == ["q1"]
