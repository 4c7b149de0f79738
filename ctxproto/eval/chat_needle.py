"""``chat-needle``: a fact the user states early in a real conversation, asked at the end.

Long chats are where history pruning and summarization lose what the user said:
an order number in turn 2 is gone by turn 30. Each item takes the first
``turns`` turns of a real conversation (ShareGPT and chitchat, alternately),
appends a random fact (``ctxproto.eval.facts.user_fact``: an order number, a
name, a date, an address, a preference) to one of the first two user turns, and
ends with the user asking for it. Conversations whose first ``turns`` turns are
longer than ``max_conversation_tokens`` are left out, so items fit the bundled
model's window.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

from ctxproto.context import Context
from ctxproto.errors import DatasetError
from ctxproto.eval.conversations import (
    Conversation,
    chitchat_conversations,
    sharegpt_conversations,
)
from ctxproto.eval.dataset import Dataset, DatasetOptions, DatasetProblem, EvalItem
from ctxproto.eval.facts import user_fact
from ctxproto.eval.json_stream import StreamEnd
from ctxproto.messages import Message
from ctxproto.tokens import TokenCounter, get_counter

__all__ = ["CHAT_SYSTEM_PROMPT", "DEFAULT_CHAT_ITEMS", "ChatNeedleDataset"]

DEFAULT_CHAT_ITEMS = 20
CHAT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the user's last question briefly, "
    "using what was said earlier in the conversation."
)


class ChatNeedleDataset(Dataset):
    """Real conversations of ``turns`` turns with a planted user fact."""

    name = "chat-needle"

    def __init__(
        self,
        options: DatasetOptions,
        counter: TokenCounter | None = None,
        *,
        sharegpt_path: Path | None = None,
        chitchat_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.counter = counter or get_counter()
        self.turns = options.turns - options.turns % 2  # end on an assistant turn
        end = StreamEnd()
        sharegpt = self._fitting(sharegpt_conversations(sharegpt_path, end))
        if end.truncated:
            self.problems.append(
                DatasetProblem("sharegpt", f"{end.reason}; the records before it were used")
            )
        chitchat = self._fitting(chitchat_conversations(chitchat_path))
        rng = random.Random(options.seed)
        rng.shuffle(sharegpt)
        rng.shuffle(chitchat)
        self._conversations = [
            c for pair in zip_longest(chitchat, sharegpt) for c in pair if c is not None
        ]
        if not self._conversations:
            raise DatasetError(
                f"chat-needle: no conversation has {self.turns} turns within "
                f"{options.max_conversation_tokens} tokens"
            )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "turns": self.turns,
            "max_conversation_tokens": self.options.max_conversation_tokens,
        }

    def _fitting(self, conversations: Iterable[Conversation]) -> list[Conversation]:
        kept = []
        for conversation in conversations:
            if len(conversation.turns) < self.turns:
                continue
            turns = conversation.turns[: self.turns]
            tokens = sum(self.counter.count(text) for _, text in turns)
            if tokens <= self.options.max_conversation_tokens:
                kept.append(Conversation(conversation.id, conversation.source, turns))
        return kept

    def items(self, limit: int | None = None) -> Iterator[EvalItem]:
        rng = random.Random(self.options.seed)
        total = min(DEFAULT_CHAT_ITEMS if limit is None else limit, len(self._conversations))
        for index, conversation in enumerate(self._conversations[:total]):
            yield self._item(index, conversation, rng)

    def _item(self, index: int, conversation: Conversation, rng: random.Random) -> EvalItem:
        fact = user_fact(rng, index)
        fact_turn = rng.choice((0, 2))
        history = []
        for position, (role, text) in enumerate(conversation.turns):
            if position == fact_turn:
                text = f"{text.rstrip()}\n\n{fact.statement}"
            history.append(Message(role=role, content=text))
        context = Context(
            system_prompt=CHAT_SYSTEM_PROMPT,
            history=history,
            query=Message(role="user", content=fact.question),
        )
        return EvalItem(
            id=f"chat-{index:04d}",
            context=context,
            answers=[fact.answer],
            metadata={
                "source": conversation.source,
                "conversation_id": conversation.id,
                "fact_kind": fact.kind,
                "fact_turn": fact_turn,
                "turns": len(history),
            },
        )
