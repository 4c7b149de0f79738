"""Turns asked at once: one session's run one after another, different sessions' together.

The backend is ``ScriptedBackend`` with a responder that takes its time, so turns that
are not kept apart overlap for sure.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ctxproto import ConfigError, Pipeline, RecencyWindow
from ctxproto.errors import BackendError, UsageError
from ctxproto.runtime import ScriptedBackend
from ctxproto.session import AsyncTurnStream, ChatSession
from ctxproto.stores.chat_history import load_history
from ctxproto.stores.session_state import SessionStateStore


class SlowReplies:
    """Answers "answer to <question>" after ``delay`` seconds, counting the requests
    being answered at once."""

    def __init__(self, delay: float = 0.2) -> None:
        self.delay = delay
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        try:
            time.sleep(self.delay)
        finally:
            with self._lock:
                self._running -= 1
        return f"answer to {messages[-1]['content']}"


def _session(backend: ScriptedBackend, store: SessionStateStore | None = None) -> ChatSession:
    return ChatSession(
        Pipeline([RecencyWindow(max_turns=20)]),
        backend,
        system_prompt="Answer briefly.",
        session_id="s1",
        history_store=store,
    )


def _both_threads(first: Callable[[], object], second: Callable[[], object]) -> None:
    errors: list[BaseException] = []

    def run(turn: Callable[[], object]) -> None:
        try:
            turn()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(turn,)) for turn in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not errors, errors


async def _consume(session: ChatSession, question: str) -> str:
    return "".join([delta async for delta in session.astream(question)])


def _ask_both(way: str, session: ChatSession) -> None:
    """Two turns of ``session`` at once, asked in the way named."""
    if way == "threads":
        _both_threads(lambda: session.ask("one?"), lambda: session.ask("two?"))
    elif way == "stream and ask":
        _both_threads(lambda: list(session.stream("one?")), lambda: session.ask("two?"))
    elif way == "aask":

        async def gather() -> None:
            await asyncio.gather(session.aask("one?"), session.aask("two?"))

        asyncio.run(gather())
    else:

        async def mixed() -> None:
            await asyncio.gather(_consume(session, "one?"), session.aask("two?"))

        asyncio.run(mixed())


@pytest.mark.parametrize("way", ["threads", "stream and ask", "aask", "astream and aask"])
def test_two_turns_at_once_on_one_session_run_one_after_the_other(tmp_path, way):
    """Both turns ran at once on the empty history: the second was asked without the
    first one's question and answer, which the history then held before it."""
    replies = SlowReplies()
    backend = ScriptedBackend(replies)
    store = SessionStateStore(tmp_path / "history", namespace="history")
    session = _session(backend, store)

    _ask_both(way, session)

    assert replies.most_at_once == 1
    first, second = (request.messages for request in backend.requests)
    asked = [first[-1]["content"], second[-1]["content"]]
    assert sorted(asked) == ["one?", "two?"]
    if way.startswith("a"):  # tasks are let in in the order they asked
        assert asked == ["one?", "two?"]
    # The second turn was asked with the first one's question and answer.
    assert second[-3:-1] == [
        {"role": "user", "content": asked[0]},
        {"role": "assistant", "content": f"answer to {asked[0]}"},
    ]
    expected = [
        ("user", asked[0]),
        ("assistant", f"answer to {asked[0]}"),
        ("user", asked[1]),
        ("assistant", f"answer to {asked[1]}"),
    ]
    assert [(m.role, m.content) for m in session.history] == expected
    stored = load_history(store, "default", "s1")
    assert [(m.role, m.content) for m in stored] == expected
    assert session.last_turn is not None and session.last_turn.report.turn == 2


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
    _both_threads(lambda: alice.ask("Alice again."), lambda: list(bob.stream("Bob again.")))
    assert len(alice.history) == len(bob.history) == 4


def test_astream_yields_the_answer_and_keeps_the_turn(tmp_path):
    backend = ScriptedBackend(["The Hub 2 blinks blue.", "Hold the button."])
    store = SessionStateStore(tmp_path / "history", namespace="history")
    session = _session(backend, store)

    async def turns() -> tuple[list[str], list[str]]:
        first = [delta async for delta in session.astream("What colour?")]
        second = [delta async for delta in session.astream("And to reset it?")]
        return first, second

    first, second = asyncio.run(turns())
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


@pytest.mark.parametrize("leave", ["aclose", "break", "async with"])
def test_leaving_an_astream_early_stops_the_generation_and_frees_the_session(leave):
    """``async with`` closes the stream although ``deltas`` still refers to it: leaving
    an ``async for`` alone closes an async iterator only when nothing does."""
    backend = ScriptedBackend(["a long answer that nobody reads", "Short."])
    session = _session(backend)

    async def turns() -> str:
        if leave == "aclose":
            deltas = session.astream("Tell me everything.")
            assert await anext(deltas) == "a "
            await deltas.aclose()
        elif leave == "async with":
            async with session.astream("Tell me everything.") as deltas:
                async for delta in deltas:
                    assert delta == "a "
                    break
            assert deltas.turn is None
        else:
            async for delta in session.astream("Tell me everything."):
                assert delta == "a "
                break
        return (await asyncio.wait_for(session.aask("Then briefly?"), timeout=5)).answer

    assert asyncio.run(turns()) == "Short."
    assert backend.cancelled == 1
    # No half turn: the next turn was asked without the one left early.
    assert [m["content"] for m in backend.requests[1].messages[1:]] == ["Then briefly?"]
    assert [m.content for m in session.history] == ["Then briefly?", "Short."]


def test_a_turn_cancelled_while_it_waits_for_the_session_asks_nothing():
    backend = ScriptedBackend(["first answer here", "second"])
    session = _session(backend)

    async def turns() -> str:
        deltas = session.astream("First?")
        await anext(deltas)  # the stream holds the session
        waiting = asyncio.ensure_future(session.aask("Never asked?"))
        streamed = asyncio.ensure_future(_consume(session, "Asked after?"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await deltas.aclose()
        return await asyncio.wait_for(streamed, timeout=5)

    assert asyncio.run(turns()) == "second"
    assert [r.messages[-1]["content"] for r in backend.requests] == ["First?", "Asked after?"]


def test_turns_waiting_for_a_session_hold_no_worker_thread():
    """Four turns queued behind a stream on an executor of two threads: had each waited
    for the session in a thread, the stream's next delta would have found none free,
    and every async turn of the process would have waited for ever."""
    backend = ScriptedBackend(["one two three four", "a", "b", "c", "d"])
    session = _session(backend)

    async def rest(deltas: AsyncTurnStream) -> list[str]:
        return [delta async for delta in deltas]

    async def turns() -> tuple[str, list[str]]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
        deltas = session.astream("Count?")
        parts = [await anext(deltas)]
        queued = [asyncio.ensure_future(session.aask(f"{n}?")) for n in range(4)]
        await asyncio.sleep(0.05)  # all four wait for the session now
        try:
            parts += await asyncio.wait_for(rest(deltas), timeout=5)
        finally:  # a stream stuck for a thread lets the queued turns go, so the test ends
            await deltas.aclose()
        answers = await asyncio.wait_for(asyncio.gather(*queued), timeout=5)
        return "".join(parts), [turn.answer for turn in answers]

    assert asyncio.run(turns()) == ("one two three four", ["a", "b", "c", "d"])
    assert [m.content for m in session.history][::2] == ["Count?", "0?", "1?", "2?", "3?"]


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
        return (await asyncio.wait_for(session.aask("Again?"), timeout=5)).answer

    with pytest.raises(BackendError):
        session.ask("Break?")
    assert asyncio.run(turns()) == "fine"
    assert "".join(session.stream("Once more?")) == "fine"
    assert [m.content for m in session.history] == ["Again?", "fine", "Once more?", "fine"]


def test_a_streams_turn_is_its_own_once_the_next_turn_has_run(tmp_path):
    """The next turn, queued behind the stream, starts as soon as the stream ends:
    ``last_turn``, read by the stream's consumer after that, was the next turn's."""
    backend = ScriptedBackend(["streamed answer", "other answer", "sync answer", "late"])
    session = _session(backend)

    async def stream_while_another_waits() -> AsyncTurnStream:
        deltas = session.astream("Mine?")
        first = await anext(deltas)
        other = asyncio.ensure_future(session.aask("Other?"))
        assert first + "".join([delta async for delta in deltas]) == "streamed answer"
        assert (await other).answer == "other answer"
        return deltas

    streamed = asyncio.run(stream_while_another_waits())
    assert streamed.turn is not None and streamed.turn.answer == "streamed answer"
    assert streamed.turn.report.turn == 1
    assert session.last_turn is not None and session.last_turn.answer == "other answer"

    deltas = session.stream("Sync?")
    assert deltas.turn is None
    assert "".join(deltas) == "sync answer"
    session.ask("Later?")
    assert list(deltas) == []  # reading an ended stream again leaves its turn
    assert deltas.turn is not None and deltas.turn.answer == "sync answer"
    assert deltas.turn.report.turn == 3
    assert session.last_turn is not None and session.last_turn.report.turn == 4


def test_a_stream_closed_by_its_with_block_keeps_no_turn():
    backend = ScriptedBackend(["a long answer that nobody reads", "Short."])
    session = _session(backend)
    with session.stream("Tell me everything.") as deltas:
        assert next(deltas) == "a "
    assert backend.cancelled == 1 and deltas.turn is None
    assert session.ask("Then briefly?").answer == "Short."
    assert [m.content for m in session.history] == ["Then briefly?", "Short."]


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` in a thread of its own; fails the test if it has not ended in time."""
    ended: dict[str, Any] = {}

    def run() -> None:
        try:
            ended["result"] = call()
        except BaseException as exc:  # re-raised in the test's thread
            ended["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert ended, f"still waiting after {seconds} s"
    if "error" in ended:
        raise ended["error"]
    return ended["result"]


def test_a_blocking_turn_on_the_loop_behind_that_loops_turns_is_a_usage_error():
    """The loop, blocked by ``ask``, never ran the queued ``aask`` the session was handed
    to, nor read the next delta of its own stream: the ``ask`` waited for ever."""
    session = _session(ScriptedBackend(SlowReplies(delay=0.05)))

    async def behind_queued_aask() -> list[str]:
        turns = [asyncio.ensure_future(session.aask(q)) for q in ("One?", "Two?")]
        await asyncio.sleep(0)  # one runs, the other waits
        with pytest.raises(UsageError, match="use aask or astream"):
            session.ask("Blocking?")
        return [turn.answer for turn in await asyncio.gather(*turns)]

    async def behind_its_stream() -> str:
        async with session.astream("Three?") as deltas:
            await anext(deltas)
            with pytest.raises(UsageError, match="use aask or astream"):
                session.ask("Blocking?")
            with pytest.raises(UsageError, match="use aask or astream"):
                next(session.stream("Blocking?"))
        return (await session.aask("Four?")).answer

    assert _within(5, lambda: asyncio.run(behind_queued_aask())) == [
        "answer to One?",
        "answer to Two?",
    ]
    assert _within(5, lambda: asyncio.run(behind_its_stream())) == "answer to Four?"
    assert [m.content for m in session.history][::2] == ["One?", "Two?", "Four?"]


def test_a_blocking_turn_on_the_loop_behind_another_threads_turn_waits_for_it():
    entered, go_on = threading.Event(), threading.Event()

    def replies(messages: list[dict[str, Any]]) -> str:
        if messages[-1]["content"] == "Thread?":
            entered.set()
            go_on.wait(timeout=5)
        return f"answer to {messages[-1]['content']}"

    session = _session(ScriptedBackend(replies))
    holder = threading.Thread(target=session.ask, args=("Thread?",))
    holder.start()
    assert entered.wait(timeout=5)
    threading.Timer(0.05, go_on.set).start()

    async def blocking() -> str:
        return session.ask("On the loop?").answer  # waits for the thread's turn

    assert _within(5, lambda: asyncio.run(blocking())) == "answer to On the loop?"
    holder.join(timeout=5)
    assert [m.content for m in session.history][::2] == ["Thread?", "On the loop?"]


def _blocks_on(question: str) -> tuple[ScriptedBackend, threading.Event, threading.Event]:
    """A backend whose answer to ``question`` waits for ``go_on``, once ``entered`` is set."""
    entered, go_on = threading.Event(), threading.Event()

    def replies(messages: list[dict[str, Any]]) -> str:
        if messages[-1]["content"] == question:
            entered.set()
            go_on.wait(timeout=5)
            return "a slow answer"
        return "fine"

    return ScriptedBackend(replies), entered, go_on


def test_a_stream_cancelled_while_its_delta_is_made_frees_the_session_from_the_thread():
    backend, entered, go_on = _blocks_on("Slow?")
    session = _session(backend)

    async def turns() -> str:
        reading = asyncio.ensure_future(_consume(session, "Slow?"))
        assert await asyncio.to_thread(entered.wait, 5)  # the first delta is being made
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading  # at once: the delta is still being made
        after = asyncio.ensure_future(session.aask("After?"))
        await asyncio.sleep(0.05)
        assert not after.done()  # the thread still holds the session
        go_on.set()  # the delta ends, and the thread closes the stream
        return (await asyncio.wait_for(after, timeout=5)).answer

    assert asyncio.run(turns()) == "fine"
    assert backend.cancelled == 1
    assert [m["content"] for m in backend.requests[1].messages[1:]] == ["After?"]
    assert [m.content for m in session.history] == ["After?", "fine"]


def test_an_aask_cancelled_once_its_turn_runs_keeps_the_turn():
    backend, entered, go_on = _blocks_on("Kept?")
    session = _session(backend)

    async def turns() -> str:
        asking = asyncio.ensure_future(session.aask("Kept?"))
        assert await asyncio.to_thread(entered.wait, 5)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        after = asyncio.ensure_future(session.aask("Next?"))
        go_on.set()
        return (await asyncio.wait_for(after, timeout=5)).answer

    assert asyncio.run(turns()) == "fine"
    assert [m.content for m in session.history] == ["Kept?", "a slow answer", "Next?", "fine"]
    assert [m["content"] for m in backend.requests[1].messages[1:]] == [
        "Kept?",
        "a slow answer",
        "Next?",
    ]


def test_blocking_turns_in_threads_and_async_turns_run_one_at_a_time(tmp_path):
    replies = SlowReplies(delay=0.03)
    backend = ScriptedBackend(replies)
    store = SessionStateStore(tmp_path / "history", namespace="history")
    session = _session(backend, store)
    errors: list[BaseException] = []

    def ask(question: str) -> None:
        try:
            session.ask(question)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    async def mixed() -> None:
        threads = [threading.Thread(target=ask, args=(f"Thread {n}?",)) for n in range(3)]
        for thread in threads:
            thread.start()
        await asyncio.gather(
            session.aask("Task 0?"), _consume(session, "Task 1?"), session.aask("Task 2?")
        )
        for thread in threads:
            await asyncio.to_thread(thread.join, 5)

    asyncio.run(mixed())
    assert not errors, errors
    assert replies.most_at_once == 1
    # Each turn was asked with every turn before it.
    assert [len(r.messages) for r in backend.requests] == [2 + 2 * n for n in range(6)]
    asked = [r.messages[-1]["content"] for r in backend.requests]
    assert sorted(asked) == sorted(
        [f"Thread {n}?" for n in range(3)] + ["Task 0?", "Task 1?", "Task 2?"]
    )
    assert [m.content for m in session.history][::2] == asked
    assert load_history(store, "default", "s1") == session.history
