# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""Sixteen multi-turn conversations at once through one proxy."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.models

CLIENTS = 16
TURNS = 3


async def _conversation(proxy, index: int, stateful: bool, run: str) -> list[str]:
    tag = f"{run}-{index}:"
    headers = {"x-session-id": f"{run}-{index}", "x-ctxproto-cache": "bypass"}
    if stateful:
        headers["x-ctxproto-session-mode"] = "stateful"
    messages: list[Any] = []
    answers = []
    async with openai.AsyncOpenAI(base_url=proxy.url, api_key="key-a", max_retries=0) as aclient:
        for turn in range(TURNS):
            text = f"{tag} turn {turn}"
            new = {"role": "user", "content": text}
            messages.append(new)
            answer = await aclient.chat.completions.create(
                model="ctxproto", messages=[new] if stateful else messages, extra_headers=headers
            )
            content = answer.choices[0].message.content or ""
            messages.append({"role": "assistant", "content": content})
            # Its own conversation's answer (the upstream echoes the first and the
            # last user message it was sent; the summary may have folded the first).
            first, last = content.split(" | ")
            assert first.startswith(tag) and last == text
            answers.append(content)
    return answers


@pytest.mark.parametrize("stateful", [False, True])
def test_sixteen_concurrent_conversations(proxy, proxy_state, stateful):
    run = uuid.uuid4().hex[:6]

    async def everyone() -> list[list[str]]:
        return await asyncio.gather(
            *(_conversation(proxy, i, stateful, run) for i in range(CLIENTS))
        )

    results = asyncio.run(everyone())
    assert all(len(answers) == TURNS for answers in results)
    if stateful:
        for index in range(CLIENTS):
            history = proxy_state.flow.history("tenant-a", f"{run}-{index}")
            assert [m["role"] for m in history] == ["user", "assistant"] * TURNS
            assert history[-1]["content"] == results[index][-1]
