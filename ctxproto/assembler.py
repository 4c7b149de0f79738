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

from collections.abc import Callable
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
                _drop(sections, victim, dropped)
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
        kept = list(sections)
        for kind, cap in budget.section_caps.items():
            while sum(s.tokens for s in kept if s.kind == kind) > cap:
                victim = _victims_of_kind(kept, kind)
                if victim is None:
                    break
                _drop(kept, victim, dropped)
        return kept

    @staticmethod
    def _fit_estimate(
        sections: list[Section], limit: int, dropped: dict[str, int]
    ) -> list[Section]:
        """Drop by the additive per-section estimate first, so the exact loop renders few times."""
        kept = list(sections)
        estimate = sum(s.tokens for s in kept) + REPLY_PRIMING_TOKENS
        while estimate > limit:
            victim = _next_victim(kept)
            if victim is None:
                break
            estimate -= sum(s.tokens for s in victim)
            _drop(kept, victim, dropped)
        return kept


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


def _drop(sections: list[Section], victim: list[Section], dropped: dict[str, int]) -> None:
    for section in victim:
        sections.remove(section)
        dropped[section.kind] = dropped.get(section.kind, 0) + 1


def _next_victim(sections: list[Section]) -> list[Section] | None:
    """What to drop next: the oldest history turn, then the weakest document, then memory."""
    for kind in ("history", "documents", "memory"):
        victim = _victims_of_kind(sections, kind)
        if victim is not None:
            return victim
    return None


def _victims_of_kind(sections: list[Section], kind: str) -> list[Section] | None:
    """The next unpinned unit of ``kind`` to drop, as a list kept or dropped together.

    History goes oldest block first (a tool call with its results), with the
    replies that follow it up to the next user message: a reply left without its
    question reads as the model speaking unprompted, and chat templates that
    require roles to alternate refuse it. Documents go last-listed first, since
    retrievers list the best first.
    """
    of_kind = [s for s in sections if s.kind == kind]
    if kind == "history":
        by_message = {id(s.message): s for s in of_kind}
        blocks = [
            [by_message[id(m)] for m in block]
            for block in group_blocks([s.message for s in of_kind if s.message is not None])
        ]
        for index, block in enumerate(blocks):
            if any(s.pinned for s in block):
                continue
            victim = list(block)
            for reply in blocks[index + 1 :]:
                if reply[0].role == "user" or any(s.pinned for s in reply):
                    break
                victim += reply
            return victim
        return None
    for section in reversed(of_kind):
        if not section.pinned:
            return [section]
    return None
