"""Pairing tool calls with their results, as OpenAI's chat API requires."""

import pytest

from ctxproto import Message
from ctxproto.text.turns import group_blocks, pair_tool_calls


def _call(call_id: str) -> dict[str, object]:
    return {"id": call_id, "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


def _messages(*raw: dict[str, object]) -> list[Message]:
    return [Message.model_validate(m) for m in raw]


def test_a_result_separated_from_its_call_is_dropped_with_the_call() -> None:
    messages = _messages(
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "tool_calls": [_call("c1")]},
        {"role": "user", "content": "hurry"},
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
        {"role": "user", "content": "well?"},
    )
    paired = pair_tool_calls(messages)
    assert [m.role for m in paired.messages] == ["user", "user", "user"]
    assert paired.repairs == [
        "dropped 1 tool result that answered no call",
        "dropped 1 tool call that had no result",
    ]


def test_paired_messages_group_into_whole_blocks() -> None:
    messages = _messages(
        {"role": "assistant", "content": "two lookups", "tool_calls": [_call("a"), _call("b")]},
        {"role": "tool", "tool_call_id": "b", "content": "B"},
        {"role": "tool", "tool_call_id": "x", "content": "stray"},
        {"role": "tool", "tool_call_id": "a", "content": "A"},
        {"role": "user", "content": "thanks"},
    )
    paired = pair_tool_calls(messages)
    assert [len(block) for block in group_blocks(paired.messages)] == [3, 1]
    assert paired.repairs == ["dropped 1 tool result that answered no call"]


def test_unanswered_calls_at_the_end_are_refused() -> None:
    messages = _messages(
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "tool_calls": [_call("c1")]},
    )
    with pytest.raises(ValueError, match=r"messages\[1\].*c1"):
        pair_tool_calls(messages)
