"""Grouping history messages into blocks that must be kept or dropped together.

An assistant message that calls tools and the ``tool`` messages answering it form
one block: sending a tool result without its call (or a call without its result)
is rejected by OpenAI-compatible servers and confuses models. This is the rule
LangChain's ``trim_messages`` enforces; every stage and the assembler use it.

``pair_tool_calls`` makes a request's messages obey the rule in the first
place, the way OpenAI's chat-completions API checks them (each call of an
assistant message answered by a ``tool`` message right after it; each ``tool``
message answering such a call). Requests that break it arrive from clients
that trimmed history themselves or lost a result; see ``docs/architecture.md``
for what is dropped, what is refused and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ctxproto.messages import Message

__all__ = ["PairedMessages", "flatten", "group_blocks", "pair_tool_calls"]


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


def block_of(blocks: Sequence[Sequence[Message]], message: Message | None) -> int | None:
    """The index of the block ``message`` starts (the same object), or ``None``."""
    if message is None:
        return None
    return next((i for i, block in enumerate(blocks) if block[0] is message), None)


def flatten(blocks: Sequence[Sequence[Message]]) -> list[Message]:
    """The messages of ``blocks`` in order."""
    return [message for block in blocks for message in block]


@dataclass
class PairedMessages:
    """Messages whose tool calls and results pair up, and what was changed to get there."""

    messages: list[Message]
    repairs: list[str] = field(default_factory=list)


def pair_tool_calls(messages: Sequence[Message]) -> PairedMessages:
    """Drop tool results that answer no call and calls never answered, saying so in ``repairs``.

    A result belongs to the assistant message it follows (other results may
    come between) and must carry one of its call ids. A call without a result
    is dropped from an earlier turn, keeping the assistant's text (the message
    goes when it had nothing else). The exception is the last turn: a request
    that ends in unanswered calls still owes their results, and guessing would
    answer a different question, so it raises ``ValueError`` naming the message.
    """
    kept: list[Message] = []
    orphans = unanswered = 0
    index = 0
    while index < len(messages):
        start, message = index, messages[index]
        index += 1
        if message.role == "tool":
            orphans += 1  # not taken by a call just before it
            continue
        if message.role != "assistant" or not message.tool_calls:
            kept.append(message)
            continue
        call_ids = {call.id for call in message.tool_calls}
        waiting = set(call_ids)
        results = []
        while index < len(messages) and messages[index].role == "tool":
            result = messages[index]
            index += 1
            # A second result for the same call is kept too: it answers that call, and
            # dropping it would lose what the tool said.
            if result.tool_call_id in call_ids:
                waiting.discard(result.tool_call_id)
                results.append(result)
            else:
                orphans += 1
        if waiting and index == len(messages):
            missing = ", ".join(sorted(waiting))
            raise ValueError(
                f"messages[{start}] ends the request with tool calls "
                f"that have no result ({missing}); add a tool message for each"
            )
        if waiting:
            unanswered += len(waiting)
            calls = [call for call in message.tool_calls if call.id not in waiting]
            if not calls and not message.content:
                continue
            message = message.model_copy(update={"tool_calls": calls or None})
        kept.append(message)
        kept.extend(results)
    repairs = []
    if orphans:
        repairs.append(f"dropped {_count(orphans, 'tool result')} that answered no call")
    if unanswered:
        repairs.append(f"dropped {_count(unanswered, 'tool call')} that had no result")
    return PairedMessages(kept, repairs)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
