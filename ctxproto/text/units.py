"""History blocks and documents as uniform units that stages score, keep or rewrite.

``relevance_filter``, ``dedup`` and ``token_compressor`` all treat a context as a
list of pieces — a history block (a message, or a tool call with its results,
never separated: the ``trim_messages`` rule in ``ctxproto.text.turns``) or a document —
and return a context with some pieces dropped or their text replaced. Pinned
pieces are listed too, so stages can see them, but are never dropped or edited.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ctxproto.context import Context
from ctxproto.documents import Document
from ctxproto.messages import Message
from ctxproto.text.turns import flatten, group_blocks

__all__ = ["Target", "Unit", "context_units", "rebuild_context"]

Target = Literal["history", "documents"]


@dataclass(frozen=True)
class Unit:
    """One history block or document. ``editable`` units may get their text rewritten."""

    kind: Target
    index: int
    text: str
    pinned: bool
    editable: bool


def context_units(context: Context, targets: Iterable[Target]) -> list[Unit]:
    """The units of ``context`` of the ``targets`` kinds: documents first, then history."""
    wanted = set(targets)
    units: list[Unit] = []
    if "documents" in wanted:
        for i, document in enumerate(context.documents):
            units.append(Unit("documents", i, document.text, document.pinned, True))
    if "history" in wanted:
        for i, block in enumerate(group_blocks(context.history)):
            pinned = any(m.pinned for m in block)
            editable = len(block) == 1 and not block[0].tool_calls and not pinned
            text = "\n".join(m.text for m in block)
            units.append(Unit("history", i, text, pinned, editable))
    return units


def rebuild_context(
    context: Context, units: Sequence[Unit], texts: Sequence[str | None]
) -> Context:
    """A copy of ``context`` where unit ``i`` is dropped (``None``) or gets text ``texts[i]``.

    Pinned units are always kept unchanged; a non-editable unit is kept or dropped
    whole. Units not listed are untouched.
    """
    documents = list(context.documents)
    blocks = group_blocks(context.history)
    new_blocks: list[list[Message] | None] = list(blocks)
    new_documents: list[Document | None] = list(documents)
    for unit, text in zip(units, texts, strict=True):
        if unit.pinned or text == unit.text:
            continue
        if unit.kind == "documents":
            document = documents[unit.index]
            new_documents[unit.index] = (
                None if text is None else document.model_copy(update={"text": text})
            )
        elif text is None:
            new_blocks[unit.index] = None
        elif unit.editable:
            message = blocks[unit.index][0]
            new_blocks[unit.index] = [message.model_copy(update={"content": text})]
    return context.model_copy(
        update={
            "documents": [d for d in new_documents if d is not None],
            "history": flatten([b for b in new_blocks if b is not None]),
        }
    )
