"""Per-token self-information from a small causal LM, in batched windows.

Selective Context (Li et al., 2023) and LLMLingua (Jiang et al., 2023) drop the
tokens a small LM finds least surprising: ``-log p(x_i | x_<i)`` measures how
much a token adds. LongLLMLingua conditions that on the question, so tokens the
question makes predictable are not mistaken for filler. We score with the
bundled LM (loaded once per process through ``ctxproto.models.loader``), split
long texts into windows of ``window_tokens`` and run them as padded batches —
on the GPU when there is one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ctxproto._extras import require
from ctxproto.models.device import resolve_device
from ctxproto.models.openmp import releasing_thread_pool
from ctxproto.models.tokenizer_input import well_formed

__all__ = ["SelfInformationScorer", "TokenScore"]


@dataclass(frozen=True)
class TokenScore:
    """One LM token of a text: its character range and its surprisal in nats."""

    start: int
    end: int
    surprisal: float


class SelfInformationScorer:
    """Scores texts token by token with a causal LM, optionally conditioned on a question."""

    def __init__(
        self,
        model: str = "default",
        *,
        device: str = "auto",
        window_tokens: int = 384,
        batch_size: int = 4,
        condition_tokens: int = 64,
    ) -> None:
        from ctxproto.models.loader import load_causal_lm, load_tokenizer

        self._torch: Any = require("torch", extra="runtime")
        self.device = resolve_device(device)
        self.window_tokens = window_tokens
        self.batch_size = batch_size
        self.condition_tokens = condition_tokens
        self._tokenizer: Any = load_tokenizer(model)
        self._model: Any = load_causal_lm(model, self.device)
        pad = self._tokenizer.pad_token_id
        self._pad_id: int = int(pad if pad is not None else self._tokenizer.eos_token_id or 0)
        self.tokens_scored = 0

    def score(self, texts: Sequence[str], condition: str = "") -> list[list[TokenScore]]:
        """For each text, its LM tokens with ``-log p(token | condition, preceding tokens)``.

        The first token of a window without a condition has no prediction and
        gets an infinite surprisal (so it is treated as informative).
        """
        prefix: list[int] = []
        if condition.strip():
            encoded = self._tokenizer(
                well_formed(f"Question: {condition.strip()}\n\n"), add_special_tokens=False
            )
            prefix = list(encoded["input_ids"])[-self.condition_tokens :]
        rows: list[tuple[int, int, list[int]]] = []  # (text index, first token, window ids)
        offsets: list[list[tuple[int, int]]] = []
        for t, text in enumerate(texts):
            # A lone surrogate made the tokenizer refuse the text (a bare TypeError);
            # replaced in place, the offsets still point into ``text``.
            clean = well_formed(text, keep_length=True)
            encoded = self._tokenizer(clean, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(encoded["input_ids"])
            offsets.append([(int(a), int(b)) for a, b in encoded["offset_mapping"]])
            for first in range(0, len(ids), self.window_tokens):
                rows.append((t, first, ids[first : first + self.window_tokens]))
        surprisal: list[list[float]] = [[math.inf] * len(o) for o in offsets]
        rows.sort(key=lambda row: len(row[2]))  # similar lengths share a batch: less padding
        for b in range(0, len(rows), self.batch_size):
            batch = rows[b : b + self.batch_size]
            values = self._forward([prefix + window for _, _, window in batch])
            for (t, first, window), row_values in zip(batch, values, strict=True):
                for k in range(len(window)):
                    position = len(prefix) + k
                    if position > 0:
                        surprisal[t][first + k] = row_values[position - 1]
        return [
            [TokenScore(a, b, s) for (a, b), s in zip(o, scores, strict=True)]
            for o, scores in zip(offsets, surprisal, strict=True)
        ]

    def _forward(self, sequences: list[list[int]]) -> list[list[float]]:
        """``-log p(next token)`` at each position but the last, per sequence."""
        torch = self._torch
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, sequence in enumerate(sequences):
            ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            mask[i, : len(sequence)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode(), releasing_thread_pool():  # models/openmp.py
            logits = self._model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = ids[:, 1:].unsqueeze(-1)
            values = torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets).squeeze(-1)
        self.tokens_scored += int(mask.sum())
        result = values.cpu().tolist()
        return [row[: max(len(s) - 1, 0)] for row, s in zip(result, sequences, strict=True)]
