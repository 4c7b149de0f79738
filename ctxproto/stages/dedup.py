"""Drop exact and near-duplicate turns or documents, keeping the first occurrence."""

from __future__ import annotations

import re
import unicodedata

from pydantic import Field, PrivateAttr

from ctxproto.context import Context
from ctxproto.models.embedder import Embedder, get_embedder
from ctxproto.stages.base import Stage, Transformed
from ctxproto.stages.registry import register_stage
from ctxproto.text.protected_spans import fact_strings
from ctxproto.text.turns import group_blocks
from ctxproto.text.units import Target, Unit, context_units, rebuild_context
from ctxproto.tokens import TokenCounter

__all__ = ["Dedup"]

_SPACES = re.compile(r"\s+")


@register_stage("dedup")
class Dedup(Stage):
    """Removes repeated content: the same chunk retrieved twice, a turn pasted again.

    Exact duplicates are found by their normalized text (Unicode NFKC, case and
    whitespace folded); near duplicates by the cosine similarity of their
    embeddings reaching ``threshold`` (the SemDeDup rule, Abbas et al., 2023) —
    unless the later one states a fact the earlier one does not ("locker 1042"
    vs "locker 1043" embed almost alike but are not duplicates).
    The first occurrence wins, so the oldest turn and the best-ranked document
    stay. Documents and history are deduplicated separately; history by whole
    turns (a user message with the replies that follow it), so a second "Yes."
    that confirms something else stays, and no reply loses its question. A
    pinned piece is never dropped, but a later copy of it is. With ``near:
    false`` no model is loaded.
    """

    threshold: float = Field(default=0.95, gt=0, le=1, description="Cosine for near duplicates.")
    near: bool = True
    targets: tuple[Target, ...] = ("history", "documents")
    embedder: str = "default"

    _embedder: Embedder | None = PrivateAttr(default=None)

    def warm_up(self) -> None:
        if self.near and self._embedder is None:
            self._embedder = get_embedder(self.embedder)

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        units = context_units(context, self.targets)
        texts: list[str | None] = [u.text for u in units]
        exact = near = 0
        for kind in ("documents", "history"):
            pieces = [
                (piece, "\n".join(units[i].text for i in piece))
                for piece in _pieces(context, units, kind)
            ]
            seen: set[str] = set()
            survivors: list[tuple[list[int], str]] = []
            for piece, text in pieces:
                if not text.strip():
                    continue
                key = _normalized(text)
                if key in seen and not any(units[i].pinned for i in piece):
                    _drop(piece, texts)
                    exact += 1
                else:
                    seen.add(key)
                    survivors.append((piece, text))
            if self.near and len(survivors) > 1:
                near += self._drop_near(
                    [piece for piece, _ in survivors],
                    units_text=[text for _, text in survivors],
                    pinned=[any(units[i].pinned for i in piece) for piece, _ in survivors],
                    texts=texts,
                )
        return Transformed(
            rebuild_context(context, units, texts),
            {"exact_duplicates": exact, "near_duplicates": near},
        )

    def _drop_near(
        self,
        survivors: list[list[int]],
        *,
        units_text: list[str],
        pinned: list[bool],
        texts: list[str | None],
    ) -> int:
        """Drop each survivor too close to an earlier kept one; returns how many went."""
        assert self._embedder is not None  # Stage.run warmed it up
        vectors = self._embedder.embed(units_text)
        similarity = vectors @ vectors.T
        facts = [fact_strings(text) for text in units_text]
        kept: list[int] = []
        dropped = 0
        for j in range(len(survivors)):
            twins = [k for k in kept if similarity[j, k] >= self.threshold and facts[j] <= facts[k]]
            if twins and not pinned[j]:
                _drop(survivors[j], texts)
                dropped += 1
            else:
                kept.append(j)
        return dropped


def _pieces(context: Context, units: list[Unit], kind: str) -> list[list[int]]:
    """The units of ``kind`` compared as one: a document each; in history, a turn each
    (a block starting with a user message and the blocks after it up to the next)."""
    members = [i for i, unit in enumerate(units) if unit.kind == kind]
    if kind == "documents":
        return [[i] for i in members]
    blocks = group_blocks(context.history)
    turns: list[list[int]] = []
    for i in members:
        if blocks[units[i].index][0].role == "user" or not turns:
            turns.append([i])
        else:
            turns[-1].append(i)
    return turns


def _drop(piece: list[int], texts: list[str | None]) -> None:
    for i in piece:
        texts[i] = None


def _normalized(text: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()
