"""The assembler: orders sections for prefix stability and enforces the budget.

Order is what changes least first — system prompt, long-lived memory, documents,
recent turns, the current query last — so that the rendered prefix stays
byte-identical from one turn to the next while its content does not change. That
is what lets a prefix-KV cache (``ctxproto.runtime``, SGLang RadixAttention, vLLM
automatic prefix caching) reuse it.

The budget guarantee is checked on the rendered output itself, not on an
estimate: the prompt handed to the backend never exceeds ``budget.prompt_limit``
tokens, and pinned content (system prompt, current query, anything marked
pinned) is never dropped. A request that ends on a tool result has no query; the
question its results answer (``Context.open_question``) is pinned in its place, so
a tight budget never leaves the model the system prompt alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

from ctxproto.budget import Budget
from ctxproto.context import Context
from ctxproto.errors import BudgetError
from ctxproto.messages import Message
from ctxproto.prompt import AssembledPrompt, Section, Stability
from ctxproto.text.turns import group_blocks
from ctxproto.tokens import MESSAGE_OVERHEAD_TOKENS, REPLY_PRIMING_TOKENS, TokenCounter, get_counter

__all__ = ["Assembler", "DocumentsPosition", "RenderMode"]

RenderMode = Literal["chat", "text"]
ChatTemplate = Callable[[list[dict[str, Any]]], str]

MEMORY_HEADING = "## Summary of the earlier conversation\n"
DOCUMENTS_HEADING = "## Reference documents\n"
QUESTION_HEADING = "\n\n## Question\n"
DocumentsPosition = Literal["system", "query"]


class Assembler:
    """Builds the final prompt from a context.

    ``render="chat"`` yields chat messages (system prompt, memory and documents
    merged into one leading system message, since many chat templates allow only
    one); ``render="text"`` a plain transcript. ``chat_template`` (for example a
    tokenizer's ``apply_chat_template``) renders ``text`` the way the target model
    sees it, and budgets are then counted on that exact text.

    ``documents_position="system"`` puts documents in the system message, after
    the memory: right for documents that stay the same across turns.
    ``"query"`` puts them in the current user message instead: right for
    documents retrieved anew for every question, which would otherwise change
    the prompt before the history and make a prefix-KV cache recompute the
    whole conversation each turn.
    """

    def __init__(
        self,
        budget: Budget | None = None,
        *,
        counter: TokenCounter | None = None,
        render: RenderMode = "chat",
        chat_template: ChatTemplate | None = None,
        documents_position: DocumentsPosition = "system",
    ) -> None:
        self.budget = budget
        self.documents_position = documents_position
        self.counter = counter or get_counter()
        self.render = render
        self.chat_template = chat_template

    # -- sections -----------------------------------------------------------

    def sections(self, context: Context) -> list[Section]:
        """The context as sections, in stability order, before any budget cut."""
        count = self.counter.count
        sections: list[Section] = []
        if context.system_prompt:
            sections.append(
                Section(
                    kind="system",
                    role="system",
                    text=context.system_prompt,
                    tokens=count(context.system_prompt) + MESSAGE_OVERHEAD_TOKENS,
                    pinned=True,
                    stability=Stability.SYSTEM,
                )
            )
        if context.summary:
            text = MEMORY_HEADING + context.summary
            sections.append(
                Section(
                    kind="memory",
                    role="system",
                    text=text,
                    tokens=count(text) + 1,
                    stability=Stability.MEMORY,
                )
            )
        documents = [
            Section(
                kind="documents",
                role="system" if self.documents_position == "system" else "user",
                text=(text := f"[{document.id}] {document.text}"),
                tokens=count(text) + 1,
                pinned=document.pinned,
                stability=(
                    Stability.DOCUMENTS if self.documents_position == "system" else Stability.QUERY
                ),
            )
            for document in context.documents
        ]
        if self.documents_position == "system":
            sections += documents
        question = context.open_question  # pinned as a query is: what the model answers
        for message in context.history:
            if message is question:
                message = message.model_copy(update={"pinned": True})
            sections.append(_message_section(message, "history", Stability.HISTORY, self.counter))
        if self.documents_position == "query":
            sections += documents
        if context.query is not None:
            query = context.query.model_copy(update={"pinned": True})
            sections.append(_message_section(query, "query", Stability.QUERY, self.counter))
        return sections

    # -- rendering ----------------------------------------------------------

    def render_messages(self, sections: list[Section]) -> list[dict[str, Any]]:
        """Chat messages: leading system-role sections merged into one system message."""
        messages: list[dict[str, Any]] = []
        system_parts: list[str] = []
        documents: list[str] = []
        for section in sections:
            if section.message is None:
                if section.kind == "documents":
                    documents.append(section.text)
                else:
                    system_parts.append(section.text)
        with_query = (
            self.documents_position == "query" and bool(sections) and sections[-1].kind == "query"
        )
        if documents and not with_query:
            system_parts.append(DOCUMENTS_HEADING + "\n\n".join(documents))
        if system_parts:
            messages.append({"role": "system", "content": "\n\n".join(system_parts)})
        for section in sections:
            if section.message is not None:
                messages.append(section.message.to_openai())
        if documents and with_query:
            query = messages[-1]
            question = Message.model_validate(query).text  # content may be parts, or none
            query["content"] = (
                DOCUMENTS_HEADING + "\n\n".join(documents) + QUESTION_HEADING + question
            )
        return messages

    def render_text(self, messages: list[dict[str, Any]]) -> str:
        """The prompt as the model sees it: its chat template, or a plain transcript."""
        if self.chat_template is not None:
            return self.chat_template(messages)
        lines = []
        for message in messages:
            body = Message.model_validate(message).text
            lines.append(f"{message['role'].capitalize()}: {body}")
        lines.append("Assistant:")
        return "\n\n".join(lines)

    def count_rendered(self, messages: list[dict[str, Any]], text: str) -> int:
        """Exact prompt tokens of a rendering, as the budget measures them."""
        if self.render == "chat" and self.chat_template is None:
            return self.counter.count_messages([Message.model_validate(m) for m in messages])
        return self.counter.count(text)

    # -- assembly -----------------------------------------------------------

    def assemble(self, context: Context) -> AssembledPrompt:
        """Sections in order, cut to the budget, rendered."""
        sections = self.sections(context)
        dropped: dict[str, int] = {}
        if self.budget is not None:
            sections = self._apply_caps(sections, self.budget, dropped)
            sections = self._fit_estimate(sections, self.budget.prompt_limit, dropped)
        messages, text, tokens = self._render(sections)
        if self.budget is not None:
            limit = self.budget.prompt_limit
            while tokens > limit:
                victim = _next_victim(sections)
                if victim is None:
                    pinned_only = [s for s in sections if s.pinned]
                    _, _, pinned_tokens = self._render(pinned_only)
                    raise BudgetError(
                        f"pinned content alone needs {pinned_tokens} tokens, "
                        f"{pinned_tokens - limit} more than the budget of {limit}",
                        overflow_tokens=pinned_tokens - limit,
                    )
                sections = _without(sections, victim, dropped)
                messages, text, tokens = self._render(sections)
        return AssembledPrompt(
            sections=sections,
            messages=messages,
            text=text,
            prompt_tokens=tokens,
            budget=self.budget.prompt_limit if self.budget is not None else None,
            dropped=dropped,
        )

    def _render(self, sections: list[Section]) -> tuple[list[dict[str, Any]], str, int]:
        messages = self.render_messages(sections)
        text = self.render_text(messages)
        return messages, text, self.count_rendered(messages, text)

    @staticmethod
    def _apply_caps(
        sections: list[Section], budget: Budget, dropped: dict[str, int]
    ) -> list[Section]:
        gone: list[Section] = []
        for kind, cap in budget.section_caps.items():
            used = sum(s.tokens for s in sections if s.kind == kind)
            for victim in _drop_order(sections, (kind,)):
                if used <= cap:
                    break
                used -= sum(s.tokens for s in victim)
                gone += victim
        return _without(sections, gone, dropped)

    @staticmethod
    def _fit_estimate(
        sections: list[Section], limit: int, dropped: dict[str, int]
    ) -> list[Section]:
        """Drop by the additive per-section estimate first, so the exact loop renders few times.

        The drop order is walked once: finding each victim afresh in the remaining
        sections made a context of thousands of small messages or documents cost
        time quadratic in their number (6,000 documents took 17 s to cut to a
        small budget).
        """
        estimate = sum(s.tokens for s in sections) + REPLY_PRIMING_TOKENS
        gone: list[Section] = []
        for victim in _drop_order(sections, ("history", "documents", "memory")):
            if estimate <= limit:
                break
            estimate -= sum(s.tokens for s in victim)
            gone += victim
        return _without(sections, gone, dropped)


def _message_section(
    message: Message, kind: str, stability: Stability, counter: TokenCounter
) -> Section:
    return Section(
        kind=kind,
        role=message.role,
        text=message.text,
        tokens=counter.count_message(message),
        pinned=message.pinned,
        stability=stability,
        message=message,
    )


def _without(
    sections: list[Section], gone: list[Section], dropped: dict[str, int]
) -> list[Section]:
    """``sections`` less ``gone`` (by identity), each counted in ``dropped`` by kind."""
    ids = {id(section) for section in gone}
    for section in gone:
        dropped[section.kind] = dropped.get(section.kind, 0) + 1
    return [s for s in sections if id(s) not in ids]


def _next_victim(sections: list[Section]) -> list[Section] | None:
    """What to drop next: the oldest history turn, then the weakest document, then memory."""
    return next(_drop_order(sections, ("history", "documents", "memory")), None)


def _drop_order(sections: list[Section], kinds: tuple[str, ...]) -> Iterator[list[Section]]:
    """The unpinned units of ``kinds`` in the order they go, each a list kept or dropped together.

    History goes oldest block first (a tool call with its results), with the
    replies that follow it up to the next user message: a reply left without its
    question reads as the model speaking unprompted, and chat templates that
    require roles to alternate refuse it. Documents go last-listed first, since
    retrievers list the best first; memory goes last.
    """
    for kind in kinds:
        of_kind = [s for s in sections if s.kind == kind]
        if kind == "history":
            yield from _history_drop_order(of_kind)
        else:
            yield from ([s] for s in reversed(of_kind) if not s.pinned)


def _history_drop_order(history: list[Section]) -> Iterator[list[Section]]:
    """History units oldest first: an unpinned block with the unpinned replies after it."""
    blocks: list[list[Section]] = []
    position = 0
    for block in group_blocks([s.message for s in history if s.message is not None]):
        blocks.append(history[position : position + len(block)])
        position += len(block)
    index = 0
    while index < len(blocks):
        if any(s.pinned for s in blocks[index]):
            index += 1
            continue
        victim = list(blocks[index])
        index += 1
        while index < len(blocks):
            reply = blocks[index]
            if reply[0].role == "user" or any(s.pinned for s in reply):
                break
            victim += reply
            index += 1
        yield victim
