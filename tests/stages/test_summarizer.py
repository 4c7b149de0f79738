from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxproto import Context, Message
from ctxproto.pipeline import Pipeline
from ctxproto.stages.summarizer import Summarizer, _states_user_fact
from ctxproto.stores import SessionStateStore

FACT = "By the way, my order number is ORD-551203."
CHATTER = [
    "Can you suggest a good book about gardening?",
    "Try 'The Well-Tempered Garden'; it is a classic about planting and design.",
    "How often should I water tomatoes in summer?",
    "Water them deeply two or three times a week, more often in a heat wave.",
    "What about basil on a windowsill?",
    "Basil likes sun and soil that stays slightly moist.",
]


def chat(turns: int, fact_at: int = 0) -> list[Message]:
    history = []
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        text = CHATTER[i % len(CHATTER)] + f" (turn {i})"
        if i == fact_at:
            text += " " + FACT
        history.append(Message(role=role, content=text))
    return history


def ctx(history: list[Message], session: str | None = "s1", tenant: str = "acme") -> Context:
    return Context(
        system_prompt="You are a helpful assistant.",
        history=history,
        query=Message(role="user", content="What is my order number?"),
        session_id=session,
        tenant_id=tenant,
    )


def extractive(tmp_path: Path, **kwargs) -> Summarizer:
    params = {"keep_turns": 4, "checkpoint_every": 4, "max_summary_tokens": 80}
    params.update(kwargs)
    return Summarizer(model=None, state_path=str(tmp_path / "state"), **params)


def test_folds_only_whole_checkpoints_and_keeps_facts_verbatim(tmp_path, counter):
    stage = extractive(tmp_path)
    result = stage.run(ctx(chat(14)), counter)
    # 14 blocks, 4 in the window: 10 outside, two checkpoints of 4 folded, 2 pending.
    assert result.report.counters["folded_turns"] == 8
    assert len(result.context.history) == 6
    assert result.context.summary is not None
    assert FACT in result.context.summary
    assert counter.count(result.context.summary) <= 80


def test_facts_past_the_summary_budget_are_counted_as_dropped(tmp_path, counter):
    history = []
    for i in range(12):
        history.append(Message(role="user", content=f"My locker number is {1000 + i}."))
        history.append(Message(role="assistant", content="Noted."))
    stage = extractive(tmp_path, keep_turns=2, checkpoint_every=2, max_summary_tokens=40)
    result = stage.run(ctx(history), counter)
    summary = result.context.summary or ""
    kept = sum(f"locker number is {1000 + i}" in summary for i in range(12))
    assert 0 < kept < 10  # of the 10 folded
    assert result.report.counters["facts_dropped"] > 0
    roomy = extractive(tmp_path / "roomy", keep_turns=2, checkpoint_every=2, max_summary_tokens=400)
    assert roomy.run(ctx(history), counter).report.counters["facts_dropped"] == 0


def test_nothing_to_fold_is_a_no_op(tmp_path, counter):
    context = ctx(chat(6))
    assert extractive(tmp_path).run(context, counter).context == context


def test_prompt_prefix_is_byte_identical_between_checkpoints(tmp_path, counter):
    pipeline = Pipeline([extractive(tmp_path)], render="text")
    history = chat(30)
    prompts = []
    summaries = []
    for turns in range(8, 30, 2):  # the client sends the whole history every turn
        result = pipeline.run(ctx(history[:turns]))
        assert result.prompt is not None
        prompts.append(result.prompt.text)
        summaries.append(result.context.summary)
    query_part = "User: What is my order number?"
    stable = 0
    for before, after, s_before, s_after in zip(
        prompts, prompts[1:], summaries, summaries[1:], strict=False
    ):
        if s_before == s_after:
            head = before[: before.rindex(query_part)]
            assert after.startswith(head)
            stable += 1
    assert stable >= 5
    assert len(set(summaries)) >= 3  # it does get rewritten at checkpoints


def test_history_past_max_history_tokens_is_folded_at_once(tmp_path, counter):
    history = chat(14)
    bound = sum(counter.count_message(m) for m in history) - 1
    stage = extractive(tmp_path, checkpoint_every=100, max_history_tokens=bound)
    result = stage.run(ctx(history), counter)
    # No checkpoint of 100 is complete, but the history is over the bound:
    # everything outside the window of 4 is folded, facts kept verbatim.
    assert result.report.counters["folded_turns"] == 10
    assert result.context.history == history[10:]
    assert FACT in (result.context.summary or "")
    under = extractive(tmp_path, checkpoint_every=100, max_history_tokens=bound + 1)
    assert under.run(ctx(history, session="s2"), counter).report.counters["folded_turns"] == 0


def test_turns_folded_early_stay_folded_on_the_next_turn(tmp_path, counter):
    history = chat(14)
    bound = sum(counter.count_message(m) for m in history) - 1
    first = extractive(tmp_path, checkpoint_every=100, max_history_tokens=bound)
    folded = first.run(ctx(history), counter).context
    # A new process, same store: the next turn is far under the bound and no
    # checkpoint is due, yet the 10 folded blocks are not brought back.
    again = extractive(tmp_path, checkpoint_every=100, max_history_tokens=bound)
    result = again.run(ctx(chat(16)), counter)
    assert result.report.counters["checkpoints"] == 0
    assert result.context.history == chat(16)[10:]
    assert result.context.summary == folded.summary


def test_prompt_grows_append_only_until_the_history_outgrows_its_bound(tmp_path, counter):
    """Turn N+1's prompt is turn N's prompt plus its answer, except at the one fold.

    With checkpoints every few turns (``checkpoint_every=4`` here) the summary
    is rewritten, and the prompt changes below its system message, every other
    turn; folding only when the history outgrows ``max_history_tokens`` keeps
    the prompt append-only in between, so a prefix-KV cache computes only the
    new turn.
    """
    history = chat(40)
    stage = extractive(tmp_path, checkpoint_every=100, max_history_tokens=700)
    pipeline = Pipeline([stage], render="text")
    query_part = "User: What is my order number?"
    prompts = []
    for turns in range(2, 40, 2):
        result = pipeline.run(ctx(history[:turns]))
        assert result.prompt is not None
        prompts.append(result.prompt.text)
    rewrites = [
        i
        for i, (before, after) in enumerate(pairwise(prompts))
        if not after.startswith(before[: before.rindex(query_part)])
    ]
    assert len(rewrites) == 1
    fold = rewrites[0]
    assert counter.count(prompts[fold + 1]) < counter.count(prompts[fold]) - 300
    assert FACT in prompts[-1]


def test_state_survives_restart_and_is_resumed(tmp_path, counter):
    first = extractive(tmp_path).run(ctx(chat(14)), counter)
    assert first.report.counters["checkpoints"] == 2
    again = extractive(tmp_path).run(ctx(chat(15)), counter)  # a new process, same store
    assert again.report.counters["checkpoints"] == 0
    assert again.context.summary == first.context.summary
    later = extractive(tmp_path).run(ctx(chat(18)), counter)
    assert later.report.counters["checkpoints"] == 1


def test_tenants_are_isolated(tmp_path, counter):
    extractive(tmp_path).run(ctx(chat(14), tenant="acme"), counter)
    store = SessionStateStore(tmp_path / "state", namespace="summaries")
    assert store.get("acme", "s1") is not None
    assert store.get("globex", "s1") is None
    other = extractive(tmp_path).run(ctx(chat(14, fact_at=2), tenant="globex"), counter)
    assert other.report.counters["checkpoints"] == 2


def test_edited_history_is_resummarized(tmp_path, counter):
    extractive(tmp_path).run(ctx(chat(14)), counter)
    edited = chat(14)
    edited[0] = Message(role="user", content="A different start. My name is Priya Haddad.")
    result = extractive(tmp_path).run(ctx(edited), counter)
    assert result.report.counters["checkpoints"] == 2
    assert "Priya Haddad" in (result.context.summary or "")


def test_pinned_turns_are_never_folded(tmp_path, counter):
    history = chat(14)
    history[1] = history[1].model_copy(update={"pinned": True})
    result = extractive(tmp_path).run(ctx(history), counter)
    assert history[1] in result.context.history


@pytest.mark.models
def test_an_abstractive_fold_of_a_lone_surrogate_reaches_the_model(tmp_path, lm):
    """A file name read with surrogateescape in a turn: the chat template's tokenizer
    refused the transcript with a bare TypeError."""
    stage = Summarizer(max_summary_tokens=8, state_path=str(tmp_path))
    stage.warm_up()
    said = [Message(role="user", content="My file is r\udc80port.txt, can you read it?")]
    assert isinstance(stage._abstractive("", said), str)


@pytest.mark.models
@pytest.mark.slow
def test_abstractive_keeps_facts_or_falls_back(tmp_path, counter, lm):
    stage = Summarizer(
        keep_turns=2, checkpoint_every=2, max_summary_tokens=40, state_path=str(tmp_path)
    )
    history = [
        Message(role="user", content="Hi, I am Marta Lindqvist and my flight is LH 2231."),
        Message(role="assistant", content="Nice to meet you, Marta."),
        Message(role="user", content="Thanks."),
        Message(role="assistant", content="You are welcome."),
    ]
    result = stage.run(ctx(history), counter)
    counters = result.report.counters
    assert counters["abstractive"] + counters["fallbacks"] == 1
    summary = result.context.summary or ""
    assert "Marta Lindqvist" in summary and "LH 2231" in summary


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(texts, st.booleans()), max_size=12), st.integers(8, 60))
def test_property_budget_and_pinned(tmp_path, counter, turns, budget):
    history = [
        Message(role="user" if i % 2 == 0 else "assistant", content=t, pinned=p)
        for i, (t, p) in enumerate(turns)
    ]
    stage = Summarizer(model=None, keep_turns=2, checkpoint_every=2, max_summary_tokens=budget)
    result = stage.run(ctx(history, session=None), counter)
    assert counter.count(result.context.summary or "") <= budget
    assert [m for m in history if m.pinned] == [m for m in result.context.history if m.pinned]


def test_chat_example_pipeline_keeps_the_fact_and_compresses(counter):
    root = Path(__file__).parents[2]
    pipeline = Pipeline.from_yaml(root / "examples" / "pipelines" / "chat.yaml")
    history = chat(30)
    long_history = [
        m.model_copy(update={"content": (m.content or "") + " " + CHATTER[(i + 1) % 6] * 3})
        for i, m in enumerate(history)
    ]
    long_history[0] = history[0]
    result = pipeline.run(ctx(long_history, session="example"))
    assert result.prompt is not None
    assert "ORD-551203" in result.prompt.text
    assert result.original_tokens >= 3 * result.prompt_tokens


# First-person requests that mention names and numbers: they look like facts
# the user states (the old ranking put them in the top tier) but tell nothing
# about the user, and in a long chat they outnumber the one real statement.
REQUESTS = [
    "I need 10 more headlines for my Day Sculpting course, please.",
    "Can you rewrite my Python script so it reads the CSV from S3?",
    "I don't like #8, please give me one more.",
    "Could you make my React component render 3 columns?",
    "Write me a cover letter for my interview at Weekend Health, please.",
    "Can you explain what my SQL query with 2 JOINs does?",
    "I want a poem about my trip to the Alps in 2019, please.",
]
ANSWERS = [
    "Sure, here are some options you might like.",
    "Here is a version that does that, with comments.",
    "Of course. Let me know if you want a different tone.",
]


@pytest.mark.parametrize("city", ["Halifax", "Toronto", "Quebec City"])
def test_a_fact_the_user_stated_early_survives_a_long_chat_of_requests(tmp_path, counter, city):
    """The city from turn 3 is still in memory at turn 29, whatever the city.

    Ranked by centrality among first-person requests that also carry names and
    numbers, the statement used to lose its place to them at a later rewrite.
    """
    statement = f"I live in {city}, if that matters for delivery."
    history = []
    for turn in range(28):
        user = statement if turn == 2 else REQUESTS[turn % len(REQUESTS)] + f" (turn {turn})"
        history += [
            Message(role="user", content=user),
            Message(role="assistant", content=ANSWERS[turn % len(ANSWERS)]),
        ]
    stage = extractive(tmp_path, keep_turns=6, checkpoint_every=6, max_summary_tokens=192)
    result = stage.run(ctx(history), counter)
    assert result.report.counters["folded_turns"] >= 48
    assert statement in (result.context.summary or "")
    assert counter.count(result.context.summary or "") <= 192


@pytest.mark.parametrize(
    ("sentence", "pinned"),
    [
        ("I live in Halifax, if that matters for delivery.", True),
        ("My sister's wedding is on June 3, 2027.", True),
        ("For the record, my favourite dinner is shakshuka.", True),
        ("i moved to Oslo last year.", True),
        ("I live in Łódź, near the old factory.", True),
        ("I don't like #8, please give me one more.", False),
        ("Can I use the Plug Mini with a space heater?", False),
        ("Give me an example of a question about Weekend Health.", False),
        ("The Hub 2 has a solid amber light.", False),
    ],
)
def test_user_facts_are_recognised_by_form(sentence, pinned):
    assert _states_user_fact(sentence) is pinned


def test_a_fold_never_leaves_a_tool_call_or_answer_without_its_question(tmp_path, counter):
    """A group of blocks can end inside a turn (a tool call is a block of its own);
    the verbatim history used to open on the call whose question was folded."""
    from ctxproto.messages import FunctionCall, ToolCall

    history = []
    for i in range(6):
        call = ToolCall(id=f"c{i}", function=FunctionCall(name="weather"))
        history += [
            Message(role="user", content=f"What is the weather in city {i}?"),
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id=f"c{i}", content=f"{10 + i} degrees"),
            Message(role="assistant", content=f"It is {10 + i} degrees in city {i}."),
        ]
    stage = extractive(tmp_path, keep_turns=6, checkpoint_every=4, max_summary_tokens=200)
    folded = 0
    for end in range(4, len(history) + 1, 4):  # the chat as it grows, turn by turn
        result = stage.run(ctx(history[:end]), counter)
        folded = max(folded, int(result.report.counters["folded_turns"]))
        assert result.context.history[0].role == "user", end
    assert folded > 0


@pytest.mark.parametrize("keep_turns", [0, 1])
def test_the_open_question_of_a_request_ending_on_tool_results_is_never_folded(
    tmp_path, counter, keep_turns
):
    """With no query, the last user message and the tool calls and results after it
    are what the model answers; ``keep_turns: 0`` folded them all, and the prompt
    asked nothing."""
    from ctxproto.messages import FunctionCall, ToolCall

    call = ToolCall(id="c1", function=FunctionCall(name="weather", arguments='{"city": "Oslo"}'))
    asked = [
        Message(role="user", content="What is the weather in Oslo today?"),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", tool_call_id="c1", content="Rain, 7 degrees."),
        Message(role="assistant", tool_calls=[call.model_copy(update={"id": "c2"})]),
        Message(role="tool", tool_call_id="c2", content="Rain, 8 degrees."),
    ]
    context = ctx([*chat(4), *asked]).model_copy(update={"query": None})
    stage = extractive(tmp_path, keep_turns=keep_turns, checkpoint_every=1)
    result = stage.run(context, counter)
    assert result.report.counters["folded_turns"] == 4
    assert result.context.history == asked


def test_facts_of_an_abstractive_summary_survive_an_extractive_fallback(
    tmp_path, counter, monkeypatch
):
    """A summary the LM wrote carries every fact the user stated (it is checked for
    them); when a later fold falls back to extraction, those facts are pinned there
    as the user's own sentences are. They used to rank as plain lines, and a fold
    with many new facts pushed them out, without counting them as dropped."""
    written = iter(["Marta Lindqvist flies on LH 2231 from Oslo. She likes tea.", ""])
    stage = Summarizer(
        keep_turns=2, checkpoint_every=2, max_summary_tokens=60, state_path=str(tmp_path)
    )
    stage._lm = object()  # an LM is loaded; what it writes comes from ``written``
    monkeypatch.setattr(Summarizer, "_abstractive", lambda self, summary, messages: next(written))
    history = [
        Message(role="user", content="I am Marta Lindqvist; my flight is LH 2231 from Oslo."),
        Message(role="assistant", content="Nice to meet you, Marta. I will keep that in mind."),
    ]
    lockers = " ".join(f"My locker number is {4100 + i} at Gate {20 + i}." for i in range(3))
    history += [
        Message(role="user", content=lockers),
        Message(role="assistant", content="Noted, thank you."),
        Message(role="user", content="Thanks."),
        Message(role="assistant", content="You are welcome."),
    ]
    first = stage.run(ctx(history[:4]), counter).report.counters
    assert first["abstractive"] == 1
    result = stage.run(ctx(history), counter)
    assert result.report.counters["fallbacks"] == 1
    summary = result.context.summary or ""
    assert "LH 2231" in summary and "Marta Lindqvist" in summary


def test_a_store_with_no_idle_ttl_is_not_opened_for_the_sweep(tmp_path: Path) -> None:
    """The server asks each stage for the stores to sweep when it starts: a store with
    no TTL has nothing to sweep, and opening it there held a Redis pool (or a folder)
    from the start that used to open at the first summary."""
    idle = Summarizer(model=None, state_path=str(tmp_path / "kept"))
    assert idle.session_stores() == []
    assert not (tmp_path / "kept").exists()
    expiring = Summarizer(model=None, state_path=str(tmp_path / "ttl"), state_idle_ttl_s=60)
    try:
        assert len(expiring.session_stores()) == 1
        assert (tmp_path / "ttl").is_dir()
    finally:
        expiring.close()
