"""Keep the newest turns of the history within a token or turn limit."""

from __future__ import annotations

from pydantic import Field

from ctxproto.context import Context
from ctxproto.messages import Message
from ctxproto.stages.base import Stage, Transformed
from ctxproto.stages.registry import register_stage
from ctxproto.text.turns import flatten, group_blocks
from ctxproto.tokens import TokenCounter

__all__ = ["RecencyWindow"]


@register_stage("recency_window")
class RecencyWindow(Stage):
    """Keeps the most recent history turns, the rules of LangChain's ``trim_messages``.

    - the system prompt is never touched (it is not part of the history);
    - an assistant tool call is never separated from its tool results;
    - pinned messages always stay, outside the limits;
    - with ``start_on_user`` the kept window begins at a user turn, so the model
      never sees an answer without its question;
    - with no query (a request that ends on a tool result), its open question
      (``Context.open_question``) stays, outside the limits, as a query would;
      without it ``start_on_user`` emptied the history.

    ``max_tokens`` and ``max_turns`` (a turn is one message block) may be
    combined; the stricter wins.
    """

    max_tokens: int | None = Field(default=None, ge=0, description="Token limit for the window.")
    max_turns: int | None = Field(default=None, ge=0, description="Message-block limit.")
    start_on_user: bool = True

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        blocks = group_blocks(context.history)
        question = context.open_question
        always = [_pinned(block) or block[0] is question for block in blocks]
        keep = [False] * len(blocks)
        used_tokens = used_turns = 0
        full = False
        for i in reversed(range(len(blocks))):
            if always[i]:
                keep[i] = True
                continue
            if full:
                continue
            cost = sum(counter.count_message(m) for m in blocks[i])
            over_tokens = self.max_tokens is not None and used_tokens + cost > self.max_tokens
            over_turns = self.max_turns is not None and used_turns + 1 > self.max_turns
            if over_tokens or over_turns:
                full = True
                continue
            keep[i] = True
            used_tokens += cost
            used_turns += 1
        if self.start_on_user:
            # A reply goes when the question it follows went: the window's leading
            # answers. One that follows a question kept outside the window (pinned,
            # or the open question of a request ending on tool results) stays, even
            # when an earlier reply to it went: the newest tool results are what
            # such a request is sent to answer.
            asked = False
            for i, block in enumerate(blocks):
                if block[0].role == "user":
                    asked = keep[i]
                elif keep[i] and not always[i] and not asked:
                    keep[i] = False
        history = flatten([block for block, kept in zip(blocks, keep, strict=True) if kept])
        return Transformed(
            context=context.model_copy(update={"history": history}),
            counters={
                "dropped_messages": len(context.history) - len(history),
                "kept_messages": len(history),
            },
        )


def _pinned(block: list[Message]) -> bool:
    return any(m.pinned for m in block)
