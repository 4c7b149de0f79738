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

A caller may also say what it expects the answer to be (OpenAI's Predicted Outputs,
``GenerationParams.prediction``): the text being edited, a template, an answer given
to a similar question before. Drafts then follow that text from the answer's first
token, and pick it up again after the answer departs from it and comes back (a
3-gram of the answer found in the prediction), before any lookup in the prompt.
The answer's tokens are still the model's own.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_DRAFT_TOKENS", "MAX_PREDICTED_TOKENS", "PromptLookup"]

MAX_DRAFT_TOKENS = 6
"""The most tokens one verifying forward checks (docs/runtime.md has the measured costs)."""

MAX_PREDICTED_TOKENS = 24
"""The most tokens a draft taken from a caller's prediction grows to (it starts at
``MAX_DRAFT_TOKENS``): an answer that follows a prediction goes on for long runs, and a
verify of many tokens, though it costs several steps, costs less than the steps it
saves once nearly all of them hold (docs/runtime.md, "Predicted outputs")."""

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
    the answer has stopped copying. Drafts from a prediction may grow to
    ``MAX_PREDICTED_TOKENS`` and are halved when one misses.
    """

    def __init__(
        self,
        max_tokens: int = MAX_DRAFT_TOKENS,
        *,
        prediction: Sequence[int] = (),
        answer_start: int = 0,
    ) -> None:
        self.max_tokens = max_tokens
        """The most tokens of a draft looked up in the prompt and answer."""
        self.draft_tokens = max_tokens
        """How many tokens the next draft from the prompt may have (adapted to acceptance)."""
        self.prediction = list(prediction)
        self.predicted_tokens = max_tokens
        """How many tokens the next draft from the prediction may have: it starts where
        prompt drafts do, grows to ``MAX_PREDICTED_TOKENS`` and is halved on a miss."""
        self._latest: dict[tuple[int, ...], int] = {}
        """n-gram -> end of its latest occurrence, for n-grams ending before the last token."""
        self._indexed = 0
        """Sequence length up to which n-grams ending before the last token are indexed."""
        self._predicted_at: dict[tuple[int, ...], int] = {}
        """n-gram -> end of its first occurrence in the prediction."""
        for end in range(len(self.prediction) + 1):
            for n in _NGRAM_SIZES:
                if n <= end:
                    self._predicted_at.setdefault(tuple(self.prediction[end - n : end]), end)
        self._cursor: int | None = 0 if self.prediction else None
        """Where the answer goes on in the prediction, while it follows it."""
        self._followed = answer_start
        """Sequence length up to which the cursor has followed the answer."""
        self._last_from_prediction = False
        self._matched = 0
        """Answer tokens that repeated the prediction where the answer followed it."""

    def draft(self, sequence: Sequence[int], limit: int) -> list[int]:
        """Up to ``limit`` tokens guessed to follow ``sequence``: the prediction's next
        ones while the answer follows it (at most ``predicted_tokens``), else what
        followed the last n-gram in prompt + answer (at most ``draft_tokens``).

        ``sequence`` must extend the one of the previous call (prompt + answer so far).
        """
        self._index(sequence)
        self._last_from_prediction = False
        if limit < 1:
            return []
        if self.prediction:
            self._follow(sequence)
            if self._cursor is not None and self._cursor < len(self.prediction):
                self._last_from_prediction = True
                size = min(limit, self.predicted_tokens)
                return self.prediction[self._cursor : self._cursor + size]
        size = min(limit, self.draft_tokens)
        for n in _NGRAM_SIZES:
            if n < len(sequence):
                end = self._latest.get(tuple(sequence[-n:]))
                if end is not None:
                    return list(sequence[end : end + size])
        return []

    def record(self, drafted: int, accepted: int) -> None:
        """Adapt the draft length to how many of ``drafted`` tokens were accepted."""
        if self._last_from_prediction:
            # A prediction that stopped holding is halved away: a long rejected draft
            # costs several steps.
            if accepted == drafted:
                self.predicted_tokens = min(self.predicted_tokens + 2, MAX_PREDICTED_TOKENS)
            else:
                self.predicted_tokens = max(self.predicted_tokens // 2, 1)
        elif accepted == drafted:
            self.draft_tokens = min(self.draft_tokens + 2, self.max_tokens)
        else:
            self.draft_tokens = max(self.draft_tokens - 1, 1)

    def settle(self, sequence: Sequence[int]) -> None:
        """Follow the answer's last tokens (those after the last draft) for the counts."""
        if self.prediction:
            self._follow(sequence)

    @property
    def accepted_prediction_tokens(self) -> int:
        """Tokens of the prediction the answer repeated, in the prediction's order."""
        return min(self._matched, len(self.prediction))

    @property
    def rejected_prediction_tokens(self) -> int:
        """Tokens of the prediction the answer did not repeat: OpenAI's names, whose
        rejected tokens are the prediction's that did not appear in the completion."""
        return len(self.prediction) - self.accepted_prediction_tokens

    def _follow(self, sequence: Sequence[int]) -> None:
        """Move the cursor over the answer's tokens since the last draft.

        While the answer repeats the prediction the cursor steps along; once it
        departs, the cursor is lost until the answer's last n tokens are found in
        the prediction again (an edit rewrote a word, then the text goes on).
        """
        for token in sequence[self._followed :]:
            cursor = self._cursor
            if (
                cursor is not None
                and cursor < len(self.prediction)
                and self.prediction[cursor] == token
            ):
                self._cursor = cursor + 1
                self._matched += 1
            else:
                self._cursor = None
        self._followed = len(sequence)
        if self._cursor is None:
            for n in _NGRAM_SIZES:
                if n <= len(sequence):
                    self._cursor = self._predicted_at.get(tuple(sequence[-n:]))
                    if self._cursor is not None:
                        break

    def _index(self, sequence: Sequence[int]) -> None:
        # n-grams ending at the last token are left out: they would match themselves.
        for end in range(max(self._indexed, 1), len(sequence)):
            for n in _NGRAM_SIZES:
                if n <= end:
                    self._latest[tuple(sequence[end - n : end])] = end
        self._indexed = max(self._indexed, len(sequence))
