"""Text embeddings, computed once per text.

Every stage that compares texts (relevance filtering, dedup, extractive
summaries, retrieval, the semantic cache) embeds through here, so a chat turn
seen on an earlier request is never embedded again: vectors are memoized by a
hash of the text. Vectors are L2-normalized float32, so a dot product is the
cosine similarity.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto._extras import quiet_transformers, require
from ctxproto.errors import ConfigError
from ctxproto.models.core_split import split_over_cores
from ctxproto.models.device import check_device
from ctxproto.models.loader import loading_model
from ctxproto.models.openmp import release_thread_pool, releasing_thread_pool
from ctxproto.models.resolver import resolve_embedder
from ctxproto.models.tokenizer_input import well_formed

__all__ = ["Embedder", "get_embedder"]

Vectors = npt.NDArray[np.float32]

_EXPECTED = "a sentence-transformers model folder or cached model id"
"""What an embedder name may be (never a GGUF file), said when the caller's is none."""


class Embedder:
    """A sentence-transformers model with a per-text memo (LRU, ``memo_size`` entries)."""

    def __init__(
        self,
        model: str = "default",
        *,
        device: str | None = None,
        batch_size: int = 64,
        memo_size: int = 200_000,
    ) -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.memo_size = memo_size
        sentence_transformers = require("sentence_transformers", extra="embed")
        if device is not None:
            check_device(device)  # before the model is read: "gpu" was torch's own error after
        resolved = resolve_embedder(model)
        if resolved.is_gguf:
            raise ConfigError(
                f"'{model}' is a GGUF causal LM, not a sentence-transformers model",
                expected=_EXPECTED,
            )
        quiet_transformers()
        with loading_model(
            model,
            "sentence-transformers model",
            resolved.location,
            remedy=resolved.remedy,
            expected=_EXPECTED,
        ):
            self._model: Any = sentence_transformers.SentenceTransformer(
                resolved.location, device=device, local_files_only=True
            )
        split_over_cores(self._model, in_place=True)  # small batches on every CPU core
        release_thread_pool()  # models/openmp.py: no idle workers left on this thread
        self.name = resolved.name
        dimension = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension  # sentence-transformers < 5
        )
        self.dimension: int = int(dimension())
        self._memo: OrderedDict[bytes, Vectors] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Normalized embeddings of ``texts``, shape ``(len(texts), dimension)``."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        keys = [self._key(t) for t in texts]
        missing: dict[bytes, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                vector = self._memo.get(key)
                if vector is None:
                    missing.setdefault(key, []).append(i)
                else:
                    self._memo.move_to_end(key)
                    out[i] = vector
        if missing:
            todo = [texts[positions[0]] for positions in missing.values()]
            vectors = self.encode_uncached(todo)
            with self._lock:
                for (key, positions), vector in zip(missing.items(), vectors, strict=True):
                    out[positions] = vector
                    self._memo[key] = vector
                while len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
        return out

    def embed_one(self, text: str) -> Vectors:
        """The embedding of a single text, shape ``(dimension,)``."""
        vector: Vectors = self.embed([text])[0]
        return vector

    def encode_uncached(self, texts: Sequence[str]) -> Vectors:
        """Run the model on ``texts`` (batched), bypassing the memo."""
        with releasing_thread_pool():  # models/openmp.py
            vectors = self._model.encode(
                # A lone surrogate (a file name read with surrogateescape, half an
                # escaped pair) made the tokenizer refuse the batch with a TypeError.
                [well_formed(text) for text in texts],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        result: Vectors = np.asarray(vectors, dtype=np.float32)
        return result

    @property
    def window_tokens(self) -> int:
        """How many of its own tokens the model reads of a text, its markers included;
        the rest of a longer text is cut off unread."""
        return int(self._model.max_seq_length)

    def past_window(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` run past ``window_tokens``: their ends are not embedded.

        Chunks are sized in the pipeline's tokens, which are not the embedder's:
        256 of one can be 300 of the other, and nothing said so.
        """
        if not texts:
            return 0
        encoded = self._model.tokenizer(
            [well_formed(text) for text in texts], add_special_tokens=True, verbose=False
        )
        return sum(len(ids) > self.window_tokens for ids in encoded["input_ids"])

    @property
    def memo_entries(self) -> int:
        return len(self._memo)

    @contextmanager
    def own_memo(self, memo: OrderedDict[bytes, Vectors]) -> Iterator[None]:
        """Remember in ``memo`` instead of the shared one for the block.

        For callers of one process that must not share work: two benchmark paths
        that each run the same pipeline on the same turns would otherwise find the
        second's embeddings already made by the first.
        """
        with self._lock:
            shared, self._memo = self._memo, memo
        try:
            yield
        finally:
            with self._lock:
                self._memo = shared


def get_embedder(model: str = "default") -> Embedder:
    """A process-wide shared embedder, so its model loads once and its memo is shared."""
    return _shared_embedder(model)


@lru_cache(maxsize=4)
def _shared_embedder(model: str) -> Embedder:
    return Embedder(model)
