"""Draft tokens for speculative greedy decoding, looked up in the prompt and the answer.

An answer over a document in the prompt often copies spans of it (a product name,
a menu path, a sentence of the policy). Prompt-lookup decoding (Saxena 2023,
transformers' ``prompt_lookup_num_tokens``; vLLM's n-gram proposer) guesses the
next tokens by finding the sequence's last n tokens earlier in prompt + answer and
copying what followed them there. The engine feeds the last token and the guesses
in one forward pass and keeps the guesses the model's own greedy choices confirm
(``Engine._decode_speculatively``), so a guess costs a little compute and never
changes the answer's tokens: on CPU a decode step is bound by streaming the
weights, which a forward of a few tokens reads once.

No draft model is involved; a miss costs nothing (the plain one-token step runs).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_DRAFT_TOKENS", "PromptLookup"]

MAX_DRAFT_TOKENS = 6
"""The most tokens one verifying forward checks (docs/runtime.md has the measured costs)."""

_NGRAM_SIZES = (3,)
"""Match lengths tried, longest first. On support answers the token after a 3-gram
match was right 66% of the time, after a 2-gram 32%, after a 1-gram 23%; a forward
of 2 tokens cost 1.35x one of 1 token, so drafts from shorter matches cost more
than they save (docs/runtime.md)."""


class PromptLookup:
    """Drafts from the latest earlier occurrence of a sequence's last tokens (an n-gram).

    The sequence (prompt + answer) only grows, so n-grams are indexed once each as
    tokens arrive: a draft costs dictionary look-ups, not a scan of the context.
    The draft length adapts as transformers' assisted generation does (two more
    after a fully accepted draft, one fewer otherwise), because a verifying
    forward of many tokens costs more than one of few, and repeated misses mean
    the answer has stopped copying.
    """

    def __init__(self, max_tokens: int = MAX_DRAFT_TOKENS) -> None:
        self.max_tokens = max_tokens
        self.draft_tokens = max_tokens
        """How many tokens the next draft may have (adapted to acceptance)."""
        self._latest: dict[tuple[int, ...], int] = {}
        """n-gram -> end of its latest occurrence, for n-grams ending before the last token."""
        self._indexed = 0
        """Sequence length up to which n-grams ending before the last token are indexed."""

    def draft(self, sequence: Sequence[int], limit: int) -> list[int]:
        """Up to ``min(limit, draft_tokens)`` tokens guessed to follow ``sequence``.

        ``sequence`` must extend the one of the previous call (prompt + answer so far).
        """
        self._index(sequence)
        size = min(limit, self.draft_tokens)
        if size < 1:
            return []
        for n in _NGRAM_SIZES:
            if n < len(sequence):
                end = self._latest.get(tuple(sequence[-n:]))
                if end is not None:
                    return list(sequence[end : end + size])
        return []

    def record(self, drafted: int, accepted: int) -> None:
        """Adapt the draft length to how many of ``drafted`` tokens were accepted."""
        if accepted == drafted:
            self.draft_tokens = min(self.draft_tokens + 2, self.max_tokens)
        else:
            self.draft_tokens = max(self.draft_tokens - 1, 1)

    def _index(self, sequence: Sequence[int]) -> None:
        # n-grams ending at the last token are left out: they would match themselves.
        for end in range(max(self._indexed, 1), len(sequence)):
            for n in _NGRAM_SIZES:
                if n <= end:
                    self._latest[tuple(sequence[end - n : end])] = end
        self._indexed = max(self._indexed, len(sequence))
