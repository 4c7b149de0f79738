"""An in-memory BM25 index over the chunks of a vector store, by slot.

Dense embeddings of a 192-token chunk mostly say what the chunk is about; a
rare word of the question (a name, a code, "Eastwick") barely moves them, so a
chunk that shares the question's phrasing but names another island can
outrank the one that answers it. BM25 (Robertson & Zaragoza, 2009, *The
Probabilistic Relevance Framework*) weighs each shared word by how rare it is
in the store, which is exactly that signal. Hybrid retrieval fuses the two
(``ctxproto.retrieval.fusion``).

The index is built from the chunk texts in one pass and answers by slot, like
``VectorIndex``: a dead slot (``None``) holds no terms. Words are lowercased
runs of letters and digits (``\\w+``), without stemming or stop words: the
inverse document frequency already gives "the" and "what" next to nothing.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["LexicalIndex"]

_WORD = re.compile(r"\w+")
K1 = 1.2
"""Term-frequency saturation: the tenth repeat of a word adds little."""
B = 0.75
"""Length normalisation: a long chunk does not win by containing more words."""


def _words(text: str) -> list[str]:
    """The lowercased words of ``text`` as the index counts them."""
    return _WORD.findall(text.lower())


class LexicalIndex:
    """BM25 scores of a query against every slot (Okapi BM25, ``K1`` and ``B``)."""

    def __init__(self, texts: Sequence[str | None]) -> None:
        self.size = len(texts)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        lengths = np.zeros(self.size, dtype=np.float32)
        for slot, text in enumerate(texts):
            if text is None:
                continue
            counts = Counter(_words(text))
            lengths[slot] = sum(counts.values())
            for word, count in counts.items():
                slots, frequencies = postings.setdefault(word, ([], []))
                slots.append(slot)
                frequencies.append(count)
        self._postings = {
            word: (np.asarray(slots, dtype=np.int64), np.asarray(counts, dtype=np.float32))
            for word, (slots, counts) in postings.items()
        }
        """Per word, the slots that hold it and how often it occurs in each."""
        self._lengths = lengths
        self._alive = np.asarray([t is not None for t in texts], dtype=np.bool_)
        self._norm = self._length_norm(self._alive)

    def _length_norm(self, alive: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
        """BM25's per-slot length term, against the average length of ``alive`` slots."""
        count = int(alive.sum())
        average = float(self._lengths[alive].sum()) / count if count else 1.0
        norm: npt.NDArray[np.float32] = K1 * (1.0 - B + B * self._lengths / max(average, 1e-9))
        return norm

    def scores(
        self, query: str, within: npt.NDArray[np.bool_] | None = None
    ) -> npt.NDArray[np.float32]:
        """The BM25 score of every slot for ``query`` (0 where no word is shared).

        ``within`` (a mask of slots, one tenant's chunks) scores those slots only,
        with the word rarity and the average length counted over them alone, so
        one tenant's ranking never depends on what other tenants stored.
        """
        total = np.zeros(self.size, dtype=np.float32)
        alive = self._alive if within is None else self._alive & within
        live = int(alive.sum())
        norm = self._norm if within is None else self._length_norm(alive)
        for word in set(_words(query)):
            posting = self._postings.get(word)
            if posting is None:
                continue
            slots, frequencies = posting
            if within is not None:
                kept = alive[slots]
                slots, frequencies = slots[kept], frequencies[kept]
            found = len(slots)
            if not found:
                continue
            idf = math.log(1.0 + (live - found + 0.5) / (found + 0.5))
            total[slots] += idf * frequencies * (K1 + 1.0) / (frequencies + norm[slots])
        return total
