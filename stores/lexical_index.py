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
        self._live = sum(1 for t in texts if t is not None)
        average = float(lengths.sum()) / self._live if self._live else 1.0
        self._norm = K1 * (1.0 - B + B * lengths / max(average, 1e-9))

    def scores(self, query: str) -> npt.NDArray[np.float32]:
        """The BM25 score of every slot for ``query`` (0 where no word is shared)."""
        total = np.zeros(self.size, dtype=np.float32)
        for word in set(_words(query)):
            posting = self._postings.get(word)
            if posting is None:
                continue
            slots, frequencies = posting
            found = len(slots)
            idf = math.log(1.0 + (self._live - found + 0.5) / (found + 0.5))
            total[slots] += idf * frequencies * (K1 + 1.0) / (frequencies + self._norm[slots])
        return total
