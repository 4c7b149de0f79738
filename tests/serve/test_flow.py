"""``ContextFlow``: stateful sessions are locked per turn and never left locked."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from ctxproto.budget import Budget
from ctxproto.errors import BudgetError
from ctxproto.pipeline import Pipeline
from ctxproto.serve.flow import ContextFlow
from ctxproto.stages.recency_window import RecencyWindow


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _prepare(flow: ContextFlow, text: str, **options: bool):
    return await flow.prepare(
        user(text),
        tenant="t",
        session="s",
        stateful=True,
        use_cache=True,
        use_pipeline=options.get("use_pipeline", True),
    )


def test_a_failed_turn_leaves_the_session_unlocked(tmp_path):
    tiny = Pipeline(
        [RecencyWindow(max_turns=2)], Budget(max_prompt_tokens=8, reserve_answer_tokens=0)
    )
    flow = ContextFlow(tiny)

    async def scenario() -> None:
        with pytest.raises(BudgetError):
            await _prepare(flow, "a question far too long for an eight-token budget " * 3)
        turn = await asyncio.wait_for(_prepare(flow, "x", use_pipeline=False), timeout=2)
        flow.release(turn)

    asyncio.run(scenario())


def test_release_never_frees_the_next_turns_hold():
    flow = ContextFlow(None)

    async def scenario() -> None:
        first = await _prepare(flow, "one")
        waiting = asyncio.ensure_future(_prepare(flow, "two"))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # one turn of a session at a time
        await flow.finish(first, {"role": "assistant", "content": "first answer"})
        second = await asyncio.wait_for(waiting, timeout=2)
        flow.release(first)  # again, as a stream's cleanup does
        third = asyncio.ensure_future(_prepare(flow, "three"))
        await asyncio.sleep(0.05)
        assert not third.done()  # still held by the second turn
        await flow.finish(second, {"role": "assistant", "content": "second answer"})
        flow.release(await asyncio.wait_for(third, timeout=2))

    asyncio.run(scenario())
    contents = [m["content"] for m in flow.history("t", "s")]
    assert contents == ["one", "first answer", "two", "second answer"]


def test_a_flow_without_a_configured_store_leaves_no_folder_behind():
    flow = ContextFlow(None)
    folder = Path(flow.store.location)
    assert folder.is_dir()
    del flow
    gc.collect()
    assert not folder.exists()
