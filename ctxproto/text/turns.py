"""Grouping history messages into blocks that must be kept or dropped together.

An assistant message that calls tools and the ``tool`` messages answering it form
one block: sending a tool result without its call (or a call without its result)
is rejected by OpenAI-compatible servers and confuses models. This is the rule
LangChain's ``trim_messages`` enforces; every stage and the assembler use it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ctxproto.messages import Message

__all__ = ["flatten", "group_blocks"]


def group_blocks(history: Sequence[Message]) -> list[list[Message]]:
    """Split ``history`` into blocks, oldest first; tool results stay with their call."""
    blocks: list[list[Message]] = []
    for message in history:
        if message.role == "tool" and blocks and _accepts_tool_result(blocks[-1]):
            blocks[-1].append(message)
        else:
            blocks.append([message])
    return blocks


def _accepts_tool_result(block: list[Message]) -> bool:
    head = block[0]
    return head.role == "assistant" and bool(head.tool_calls)


def flatten(blocks: Sequence[Sequence[Message]]) -> list[Message]:
    """The messages of ``blocks`` in order."""
    return [message for block in blocks for message in block]
