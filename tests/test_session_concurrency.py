"""Turns asked at once: a session runs one turn at a time and refuses, with a
``UsageError``, a turn asked while another of its turns is in progress; different
sessions' turns run together.

The backend is ``ScriptedBackend`` with a responder that waits for the test, so the
turn in progress is in progress for sure when the other one is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ctxproto import ConfigError, Pipeline, RecencyWindow
from ctxproto.errors import BackendError, UsageError
from ctxproto.runtime import ScriptedBackend
from ctxproto.session import ChatSession, TurnResult
from ctxproto.stores.chat_history import load_history
from ctxproto.stores.session_state import SessionStateStore

BUSY = "already answering a turn"


def _session(backend: ScriptedBackend, store: SessionStateStore | None = None) -> ChatSession:
    return ChatSession(
        Pipeline([RecencyWindow(max_turns=20)]),
        backend,
        system_prompt="Answer briefly.",
        session_id="s1",
        history_store=store,
    )


def _blocks_on(question: str) -> tuple[ScriptedBackend, threading.Event, threading.Event]:
    """A backend whose answer to ``question`` waits for ``go_on``, once ``entered`` is
    set; it answers anything else with "answer to <question>" at once."""
    entered, go_on = threading.Event(), threading.Event()

    def replies(messages: list[dict[str, Any]]) -> str:
        asked = messages[-1]["content"]
        if asked == question:
            entered.set()
            assert go_on.wait(timeout=5)
        return f"answer to {asked}"

    return ScriptedBackend(replies), entered, go_on


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """``call()`` started in a thread; its result, or its error, lands in the list."""
    ended: list[object] = []

    def run() -> None:
        try:
            ended.append(call())
        except BaseException as exc:  # checked in the test's thread
            ended.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, ended


def _overlap(
    way: str, session: ChatSession, entered: threading.Event, go_on: threading.Event
) -> list[object]:
    """The turn "one?", which waits for ``go_on``, and the turn "two?" asked while it
    runs, in the way named; the outcomes of both, in that order."""
    if way in ("threads", "stream and ask"):
        if way == "threads":
            first, first_ended = _in_thread(lambda: session.ask("one?"))
        else:
            first, first_ended = _in_thread(lambda: "".join(session.stream("one?")))
        assert entered.wait(timeout=5)
        second, second_ended = _in_thread(lambda: session.ask("two?"))
        second.join(timeout=5)
        go_on.set()
        first.join(timeout=5)
        return first_ended + second_ended

    async def gather() -> list[object]:
        first = session.aask("one?") if way == "aask" else _consume(session, "one?")
        outcomes = await asyncio.gather(
            first, session.aask("two?"), release(), return_exceptions=True
        )
        return list(outcomes[:2])

    async def release() -> None:  # the second turn is refused before the first's thread goes on
        await asyncio.to_thread(entered.wait, 5)
        go_on.set()

    return asyncio.run(gather())


async def _once_free(session: ChatSession, question: str) -> TurnResult:
    """``aask(question)`` as soon as the session is free, within a few seconds."""
    deadline = time.perf_counter() + 5
    while True:
        try:
            return await session.aask(question)
        except UsageError:
            assert time.perf_counter() < deadline, "the session was never freed"
            await asyncio.sleep(0.01)


async def _consume(session: ChatSession, question: str) -> str:
    return "".join([delta async for delta in session.astream(question)])


@pytest.mark.parametrize("way", ["threads", "stream and ask", "aask", "astream and aask"])
def test_a_turn_asked_while_another_runs_is_refused_and_the_running_turn_is_kept(tmp_path, way):
    """Two turns at once both read the old history, so the second was asked without
    the first; waiting for the first instead could wait for ever on the code that
    holds it (a loop reading an unfinished stream of the session)."""
    backend, entered, go_on = _blocks_on("one?")
    store = SessionStateStore(tmp_path / "history", namespace="history")
    session = _session(backend, store)

    start = time.perf_counter()
    first, second = _overlap(way, session, entered, go_on)
    assert time.perf_counter() - start < 5  # nothing waited for the other turn

    assert isinstance(second, UsageError)
    assert "'s1'" in str(second) and "stream.close()" in str(second)
    assert "one ChatSession per" in str(second)
    assert first == "answer to one?" or getattr(first, "answer", None) == "answer to one?"
    assert [r.messages[-1]["content"] for r in backend.requests] == ["one?"]
    expected = [("user", "one?"), ("assistant", "answer to one?")]
    assert [(m.role, m.content) for m in session.history] == expected
    stored = load_history(store, "default", "s1")
    assert [(m.role, m.content) for m in stored] == expected
    # The session is free again: the next turn runs, with the first in its history.
    assert session.ask("three?").answer == "answer to three?"
    assert [m["content"] for m in backend.requests[1].messages[1:]] == [
        "one?",
        "answer to one?",
        "three?",
    ]


def test_a_reset_while_a_turn_runs_is_refused_and_a_reset_after_it_forgets_it(tmp_path):
    """The turn in progress was asked with the old history and stores its exchange when
    it ends: a reset in between was undone by it, the session keeping a turn whose
    question the forgotten history explained."""
    backend, entered, go_on = _blocks_on("two?")
    store = SessionStateStore(tmp_path / "history", namespace="history")
    session = _session(backend, store)
    session.ask("one?")
    thread, ended = _in_thread(lambda: session.ask("two?"))
    assert entered.wait(timeout=5)
    with pytest.raises(UsageError, match="before a reset"):
        session.reset()
    go_on.set()
    thread.join(timeout=5)
    assert getattr(ended[0], "answer", None) == "answer to two?"
    assert [m.content for m in load_history(store, "default", "s1")] == [
        "one?",
        "answer to one?",
        "two?",
        "answer to two?",
    ]
    session.reset()  # the session is free again
    assert session.history == []
    assert load_history(store, "default", "s1") == []


def test_turns_of_two_sessions_run_at_the_same_time():
    """Each request waits for the other one to arrive: turns kept one at a time
    across sessions (or an async form blocking the loop) would break the barrier."""
    barrier = threading.Barrier(2, timeout=5)

    def together(messages: list[dict[str, Any]]) -> str:
        barrier.wait()
        return f"answer to {messages[-1]['content']}"

    backend = ScriptedBackend(together)
    pipeline = Pipeline([RecencyWindow(max_turns=20)])
    alice = ChatSession(pipeline, backend, session_id="alice")
    bob = ChatSession(pipeline, backend, session_id="bob")

    async def both() -> tuple[str, str]:
        streamed, asked = await asyncio.gather(_consume(alice, "Hi, I'm Alice."), bob.aask("Bob?"))
        return streamed, asked.answer

    assert asyncio.run(both()) == ("answer to Hi, I'm Alice.", "answer to Bob?")
    thread, ended = _in_thread(lambda: alice.ask("Alice again.").answer)
    assert "".join(bob.stream("Bob again.")) == "answer to Bob again."
    thread.join(timeout=5)
    assert ended == ["answer to Alice again."]
    assert len(alice.history) == len(bob.history) == 4


def test_a_stream_kept_unfinished_refuses_the_next_turn_until_it_is_closed():
    """The stream kept in a variable still holds its turn after the ``for`` loop: the
    next turn from the same thread waited for ever for it."""
    backend = ScriptedBackend(["a long answer that nobody reads", "Short."])
    session = _session(backend)
    stream = session.stream("Tell me everything.")
    for delta in stream:
        assert delta == "a "
        break
    with pytest.raises(UsageError, match=r"close its stream \(stream\.close\(\)\)"):
        session.ask("Then briefly?")
    with pytest.raises(UsageError, match=BUSY):
        next(session.stream("Then briefly?"))
    stream.close()
    assert backend.cancelled == 1
    assert session.ask("Then briefly?").answer == "Short."
    assert [m.content for m in session.history] == ["Then briefly?", "Short."]


def test_leaving_a_for_loop_over_an_unreferenced_stream_frees_the_session():
    backend = ScriptedBackend(["a long answer that nobody reads", "Short."])
    session = _session(backend)
    for delta in session.stream("Tell me everything."):
        assert delta == "a "
        break
    assert backend.cancelled == 1
    assert session.ask("Then briefly?").answer == "Short."
    assert [m["content"] for m in backend.requests[1].messages[1:]] == ["Then briefly?"]


def test_stream_is_a_generator_and_its_turn_is_last_turn_once_it_ends():
    backend = ScriptedBackend(["one two three", "next"])
    session = _session(backend)
    deltas = session.stream("Count?")
    assert inspect.isgenerator(session.stream("Unread?"))  # a generator not started asks nothing
    assert next(deltas) == "one "
    assert deltas.send(None) == "two "
    assert "".join(deltas) == "three"
    assert session.last_turn is not None and session.last_turn.answer == "one two three"
    assert session.last_turn.report.turn == 1
    session.ask("Next?")
    assert session.last_turn.report.turn == 2
    assert [r.messages[-1]["content"] for r in backend.requests] == ["Count?", "Next?"]


def test_an_aask_cancelled_once_its_turn_runs_keeps_the_turn_and_frees_the_session_at_its_end():
    backend, entered, go_on = _blocks_on("Kept?")
    session = _session(backend)

    async def turns() -> str:
        asking = asyncio.ensure_future(session.aask("Kept?"))
        assert await asyncio.to_thread(entered.wait, 5)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        with pytest.raises(UsageError, match=BUSY):  # its thread still runs the turn
            await session.aask("Too soon?")
        go_on.set()
        return (await _once_free(session, "Next?")).answer  # once the thread's turn ended

    assert asyncio.run(turns()) == "answer to Next?"
    assert [m.content for m in session.history] == [
        "Kept?",
        "answer to Kept?",
        "Next?",
        "answer to Next?",
    ]
    assert [r.messages[-1]["content"] for r in backend.requests] == ["Kept?", "Next?"]


def test_astream_yields_the_answer_and_keeps_the_turn(tmp_path):
    backend = ScriptedBackend(["The Hub 2 blinks blue.", "Hold the button."])
    store = SessionStateStore(tmp_path / "history", namespace="history")
    session = _session(backend, store)

    async def turns() -> tuple[list[str], list[str]]:
        first = [delta async for delta in session.astream("What colour?")]
        second = [delta async for delta in session.astream("And to reset it?")]
        return first, second

    first, second = asyncio.run(turns())
    assert inspect.isasyncgenfunction(ChatSession.astream)
    assert len(first) > 1 and "".join(first) == "The Hub 2 blinks blue."
    assert session.last_turn is not None
    assert "".join(second) == session.last_turn.answer == "Hold the button."
    assert session.last_turn.report.turn == 2
    assert backend.requests[1].messages[-2]["content"] == "The Hub 2 blinks blue."
    assert [m.content for m in load_history(store, "default", "s1")] == [
        "What colour?",
        "The Hub 2 blinks blue.",
        "And to reset it?",
        "Hold the button.",
    ]


@pytest.mark.parametrize("leave", ["aclose", "aclosing", "break"])
def test_leaving_an_astream_early_stops_the_generation_and_frees_the_session(leave):
    backend = ScriptedBackend(["a long answer that nobody reads", "Short."])
    session = _session(backend)

    async def turns() -> str:
        if leave == "aclose":
            deltas = session.astream("Tell me everything.")
            assert await anext(deltas) == "a "
            with pytest.raises(UsageError, match=BUSY):
                await session.aask("Too soon?")
            await deltas.aclose()
        elif leave == "aclosing":
            async with contextlib.aclosing(session.astream("Tell me everything.")) as deltas:
                async for delta in deltas:
                    assert delta == "a "
                    break
        else:
            async for delta in session.astream("Tell me everything."):
                assert delta == "a "
                break
            # The loop closes the unreferenced stream in a task of its own.
            return (await _once_free(session, "Then briefly?")).answer
        return (await session.aask("Then briefly?")).answer

    assert asyncio.run(turns()) == "Short."
    assert backend.cancelled == 1
    # No half turn: the next turn was asked without the one left early.
    assert [m["content"] for m in backend.requests[1].messages[1:]] == ["Then briefly?"]
    assert [m.content for m in session.history] == ["Then briefly?", "Short."]


def test_an_astream_cancelled_while_its_delta_is_made_frees_the_session_from_the_thread():
    backend, entered, go_on = _blocks_on("Slow?")
    session = _session(backend)

    async def turns() -> str:
        reading = asyncio.ensure_future(_consume(session, "Slow?"))
        assert await asyncio.to_thread(entered.wait, 5)  # the first delta is being made
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading  # at once: the delta is still being made
        with pytest.raises(UsageError, match=BUSY):  # the thread still holds the session
            await session.aask("Too soon?")
        go_on.set()  # the delta ends, and the thread closes the stream
        return (await _once_free(session, "After?")).answer

    assert asyncio.run(turns()) == "answer to After?"
    assert backend.cancelled == 1
    assert [m["content"] for m in backend.requests[1].messages[1:]] == ["After?"]
    assert [m.content for m in session.history] == ["After?", "answer to After?"]


def test_a_turn_that_fails_frees_the_session():
    def fails_once(messages: list[dict[str, Any]]) -> str:
        if messages[-1]["content"] == "Break?":
            raise BackendError("the model server is down")
        return "fine"

    session = _session(ScriptedBackend(fails_once))

    async def turns() -> str:
        with pytest.raises(ConfigError, match="question"):
            await session.aask(" ")
        with pytest.raises(BackendError):
            await session.aask("Break?")
        with pytest.raises(BackendError):
            await _consume(session, "Break?")
        return (await session.aask("Again?")).answer

    with pytest.raises(BackendError):
        session.ask("Break?")
    with pytest.raises(BackendError):
        list(session.stream("Break?"))
    assert asyncio.run(turns()) == "fine"
    assert "".join(session.stream("Once more?")) == "fine"
    assert [m.content for m in session.history] == ["Again?", "fine", "Once more?", "fine"]


def test_a_blocking_turn_on_the_loop_while_an_aask_runs_is_refused_at_once():
    """``ask`` on the loop's thread behind the loop's own turn waited for ever: the
    loop it blocked was what that turn needed to end."""
    backend, _, go_on = _blocks_on("One?")
    session = _session(backend)

    async def turns() -> str:
        running = asyncio.ensure_future(session.aask("One?"))
        await asyncio.sleep(0)  # the aask has taken the session
        with pytest.raises(UsageError, match=BUSY):
            session.ask("Blocking?")
        with pytest.raises(UsageError, match=BUSY):
            next(session.stream("Blocking?"))
        go_on.set()
        return (await running).answer

    thread, ended = _in_thread(lambda: asyncio.run(turns()))
    thread.join(timeout=5)
    assert ended == ["answer to One?"]
