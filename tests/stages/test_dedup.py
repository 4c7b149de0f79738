from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxproto import Context, Message
from ctxproto.documents import Document
from ctxproto.stages.dedup import Dedup


def docs(*texts: str, pinned: int | None = None) -> Context:
    return Context(
        documents=[Document(id=f"d{i}", text=t, pinned=i == pinned) for i, t in enumerate(texts)]
    )


def test_exact_duplicates_keep_the_first(counter):
    context = docs("Refunds take 5 days.", "Shipping is free.", "  refunds TAKE 5 days. ")
    result = Dedup(near=False).run(context, counter)
    assert [d.id for d in result.context.documents] == ["d0", "d1"]
    assert result.report.counters == {"exact_duplicates": 1, "near_duplicates": 0}


def test_near_duplicates_are_dropped(counter):
    context = docs(
        "Our office opens at nine in the morning on weekdays.",
        "The cafeteria serves vegetarian lunch every day.",
        "Our office opens at nine in the morning on weekdays!",
    )
    result = Dedup(threshold=0.9).run(context, counter)
    assert [d.id for d in result.context.documents] == ["d0", "d1"]
    assert result.report.counters["near_duplicates"] == 1


def test_similar_texts_with_different_facts_are_not_duplicates(counter):
    context = docs("My locker code is 1042.", "My locker code is 1043.")
    result = Dedup(threshold=0.8).run(context, counter)
    assert len(result.context.documents) == 2


def test_pinned_is_never_dropped_but_its_later_copy_is(counter):
    context = docs("Same text here.", "Same text here.", "Same text here.", pinned=1)
    result = Dedup(near=False).run(context, counter)
    assert [d.id for d in result.context.documents] == ["d0", "d1"]


def test_history_duplicates_are_whole_turns_with_their_tool_blocks(counter):
    call = {"id": "c1", "function": {"name": "lookup", "arguments": "{}"}}
    turn = [
        Message(role="user", content="What is the status of my order?"),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", tool_call_id="c1", content="shipped"),
        Message(role="assistant", content="It has shipped."),
    ]
    pasted_again = [m.model_copy() for m in turn]
    pasted_again[0] = Message(role="user", content="what is the status of my  order?")
    result = Dedup().run(Context(history=[*turn, *pasted_again]), counter)
    assert result.context.history == turn
    assert result.report.counters["exact_duplicates"] == 1


def test_a_short_reply_repeated_to_other_questions_stays_with_its_question(counter):
    history = [
        Message(role="user", content="Is parking free?"),
        Message(role="assistant", content="Yes."),
        Message(role="user", content="Do you deliver on Sundays?"),
        Message(role="assistant", content="Yes."),
        Message(role="user", content="Is parking free?"),
        Message(role="assistant", content="No, it is 2 pounds an hour since May."),
    ]
    result = Dedup().run(Context(history=history), counter)
    assert result.context.history == history


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["alpha beta", "Alpha  beta", "gamma 7", "", "  ", "é🙂字"]),
            st.booleans(),
        ),
        max_size=8,
    )
)
def test_property_pinned_survive_and_order_is_kept(counter, items):
    context = Context(history=[Message(role="user", content=t, pinned=p) for t, p in items])
    out = Dedup(threshold=0.97).run(context, counter).context.history
    assert [m for m in context.history if m.pinned] == [m for m in out if m.pinned]
    positions = [next(i for i, m in enumerate(context.history) if m is kept) for kept in out]
    assert positions == sorted(positions)
    kept_keys = [" ".join((m.content or "").split()).casefold() for m in out if not m.pinned]
    assert len([k for k in kept_keys if k]) == len({k for k in kept_keys if k})
