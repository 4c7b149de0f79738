"""Whether a near neighbour in the cache asks the same question as the query.

Cosine similarity alone cannot decide: MiniLM places "turn on dark mode" and
"turn off dark mode" closer than many true paraphrases. The verifier scores a
(query, cached question) pair with a logistic regression over features that
generalise beyond word lists:

- the cosine similarity;
- each slot conflict of ``query_slots`` (number, date, entity, direction,
  negation, polarity, prefixed antonym, scope, one-span substitution), computed
  after **spelling-tolerant alignment**: a query word within one or two edits
  of a word of the cached question is read as that word, so a typo neither
  breaks a slot's equality nor counts as a substitution;
- **alignment of content words**: how many content words of each question have
  no counterpart (same word, same stem, or a typo of it) in the other. A
  paraphrase rewords broadly; a near miss keeps everything but adds or swaps
  one thing ("my password" / "my colleague's password");
- **the shape of the edit** between the two sequences of content words: how
  many edits, the share of words changed, whether a single edit did it all
  (and the cosine when it did), with character-trigram overlap and the length
  ratio. A near miss is one edit in an otherwise identical question; a
  paraphrase is several.

- **the interaction of the two embeddings**: the elementwise product and
  absolute difference of the query's and the cached question's vectors (the
  pair features of Sentence-BERT's classifier, Reimers & Gurevych 2019), read
  through a linear probe. The cosine sums the product into one number; the
  probe weighs the dimensions that move when a question is reworded apart
  from those that move when its meaning changes. It costs one dot product
  over vectors the cache already holds: no model call per candidate.

The weights are fitted on the dev split of the labelled pairs by
``python -m ctxproto.bench.cache_verifier`` and shipped as JSON (never
pickled), with the operating point chosen on dev's out-of-fold
precision/recall curve: a false hit answers the wrong question, a miss only
costs a model call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ctxproto.errors import StoreError
from ctxproto.stores.semantic_cache.query_slots import (
    FUNCTION_WORDS,
    IDENTIFIER_DIGITS,
    SLOT_NAMES,
    QuerySlots,
    edits,
    one_span_swap,
    same_stem,
    slot_conflicts,
)

__all__ = [
    "FEATURE_NAMES",
    "WEIGHTS",
    "HitVerifier",
    "align",
    "interaction",
    "other_identifiers",
    "pair_features",
]

WEIGHTS = Path(__file__).with_name("verifier_weights.json")
FEATURE_NAMES = (
    "similarity",
    *(f"conflict_{name}" for name in SLOT_NAMES),
    *(f"unmatched_in_query_{n}" for n in ("1", "2", "3+")),
    *(f"unmatched_in_cached_{n}" for n in ("1", "2", "3+")),
    "addition_only",
    "content_swap",
    "reordered",
    "no_difference",
    "content_overlap",
    "qualifier_added",
    "similarity_if_addition",
    "similarity_if_no_conflict",
    "char_overlap",
    "length_ratio",
    "edits",
    "changed_fraction",
    "single_edit",
    "similarity_if_single_edit",
    "conflicts",
    "similarity_times_conflicts",
)
_FILLER = frozenset(
    [
        "hi",
        "hey",
        "hello",
        "hiya",
        "thanks",
        "thank",
        "thx",
        "cheers",
        "pls",
        "plz",
        "quick",
        "question",
        "sorry",
        "bother",
        "um",
        "uh",
        "ok",
        "okay",
        "guys",
        "folks",
        "asap",
        "urgent",
        "wondering",
        "anyone",
    ]
)
"""Openers, closers and politeness that chatty questions add without changing them."""
_RELATIONS = frozenset(
    ["to", "from", "into", "than", "vs", "versus", "before", "after", "instead", "rather"]
)
"""Words whose two sides a reordering swaps: the order of the rest then matters."""
_QUALIFIER_LEADS = frozenset(
    ["as", "for", "with", "without", "during", "under", "over", "per", "while", "abroad"]
)
"""Words that open a phrase narrowing a question's scope."""


def align(query: QuerySlots, cached: QuerySlots) -> QuerySlots:
    """``query`` with each misspelt word replaced by the cached word it is a typo of."""
    known = set(cached.tokens)
    spelled = {t: _counterpart(t, known) for t in query.tokens if t not in known}
    if not any(spelled.values()):
        return query
    return replace(
        query,
        tokens=tuple(spelled.get(t) or t for t in query.tokens),
        entities=tuple(spelled.get(t) or t for t in query.entities),
    )


def pair_features(
    query: QuerySlots, cached: QuerySlots, similarity: float
) -> npt.NDArray[np.float64]:
    """The features of a (query, cached question) pair, in ``FEATURE_NAMES`` order."""
    aligned = align(query, cached)
    conflicts = slot_conflicts(aligned, cached, names_in_any_case=True)
    query_content = _content(aligned.tokens)
    cached_content = _content(cached.tokens)
    only_query = [w for w in query_content if not _has_stem_in(w, cached_content)]
    only_cached = [w for w in cached_content if not _has_stem_in(w, query_content)]
    union = query_content | cached_content
    query_sequence = _content_sequence(aligned.tokens)
    cached_sequence = _content_sequence(cached.tokens)
    reordered = _reordered(aligned, cached)
    return np.array(
        [
            similarity,
            *(float(name in conflicts) for name in SLOT_NAMES),
            *_buckets(len(only_query)),
            *_buckets(len(only_cached)),
            float(bool(only_query) != bool(only_cached)),
            # over content words: a dropped article or an added "please" hides no swap
            float(one_span_swap(query_sequence, cached_sequence, max_tokens=2)),
            float(reordered),
            float(not (conflicts or only_query or only_cached or reordered)),
            len(query_content & cached_content) / len(union) if union else 1.0,
            float(_qualifies(aligned.tokens, only_query) or _qualifies(cached.tokens, only_cached)),
            similarity * (bool(only_query) != bool(only_cached)),
            similarity * (not conflicts),
            _char_overlap(query_content, cached_content),
            min(len(query_content), len(cached_content))
            / max(1, len(query_content), len(cached_content)),
            *_edit_shape(query_sequence, cached_sequence, similarity),
            len(conflicts),
            similarity * len(conflicts),
        ]
    )


def interaction(
    query_vector: npt.NDArray[np.float32], cached_vector: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """The elementwise product and absolute difference of two normalized vectors."""
    query = np.asarray(query_vector, dtype=np.float64)
    cached = np.asarray(cached_vector, dtype=np.float64)
    return np.concatenate([query * cached, np.abs(query - cached)])


def _edit_shape(
    query: tuple[str, ...], cached: tuple[str, ...], similarity: float
) -> tuple[float, float, float, float]:
    """How the content words changed: edit count (capped at 3), the share of words
    changed, whether one edit did it all, and the similarity when it did.

    A near miss changes one slot and keeps the rest in place (one edit, a small
    share); a paraphrase rewords in several places. The similarity of a
    one-edit pair says whether that edit moved the meaning.
    """
    changes = edits(query, cached)
    changed = sum(
        max(a_end - a_start, b_end - b_start) for _, a_start, a_end, b_start, b_end in changes
    )
    single = float(len(changes) == 1)
    return (
        min(len(changes), 3),
        changed / max(1, len(query), len(cached)),
        single,
        single * similarity,
    )


def _char_overlap(query: frozenset[str], cached: frozenset[str]) -> float:
    """Jaccard overlap of the character trigrams of two sets of content words:
    inflections and compounds ("rootless" / "root") overlap where words do not."""
    query_grams, cached_grams = _trigrams(query), _trigrams(cached)
    union = query_grams | cached_grams
    return len(query_grams & cached_grams) / len(union) if union else 1.0


def _trigrams(words: frozenset[str]) -> set[str]:
    padded = [f" {word} " for word in words]
    return {word[i : i + 3] for word in padded for i in range(len(word) - 2)}


def _reordered(query: QuerySlots, cached: QuerySlots) -> bool:
    """The words on the two sides of a relation swapped, the rest the same
    ("a string to a list" / "a list to a string", "a refund instead of a
    replacement" / the reverse, "from 4 to 6" / "from 6 to 4").

    Moving a whole phrase is only rewording ("Instead of a refund, can I have
    a replacement?"), and so is a new order with no relation in it ("price
    match Amazon" / "match Amazon's price").
    """
    query_sequence, cached_sequence = _slot_sequence(query), _slot_sequence(cached)
    query_words = [t for t in query_sequence if t not in _RELATIONS]
    cached_words = [t for t in cached_sequence if t not in _RELATIONS]
    if set(query_words) != set(cached_words) or query_words == cached_words:
        return False
    cached_sides = _sides(cached_sequence)
    return any((r, after, before) in cached_sides for r, before, after in _sides(query_sequence))


def _sides(sequence: tuple[str, ...]) -> set[tuple[str, str, str]]:
    """(relation, nearest word before, nearest word after) for every relation word
    in ``sequence``: "the cheapest way to get from London to Paris" has two "to"s."""
    out: set[tuple[str, str, str]] = set()
    for at, relation in enumerate(sequence):
        if relation not in _RELATIONS:
            continue
        before = [t for t in sequence[:at] if t not in _RELATIONS]
        after = [t for t in sequence[at + 1 :] if t not in _RELATIONS]
        if before and after:
            out.add((relation, before[-1], after[0]))
    return out


def _qualifies(tokens: tuple[str, ...], unmatched: list[str]) -> bool:
    """An unmatched word sits in a phrase led by a preposition: an added qualifier
    narrows the question ("as a part-time student", "for my business"), where an
    added clause ("I forgot my password, ...") or a word ("date") only rewords it."""
    extra = set(unmatched)
    return any(
        token in extra and _QUALIFIER_LEADS & set(tokens[max(0, i - 3) : i])
        for i, token in enumerate(tokens)
    )


def _buckets(count: int) -> tuple[float, float, float]:
    """One-hot 1 / 2 / 3+ (0 is all zeros): one extra word is not half of two."""
    return float(count == 1), float(count == 2), float(count >= 3)


@dataclass(frozen=True, eq=False)
class HitVerifier:
    """A logistic regression over ``pair_features`` and ``interaction``, and the
    probability it must reach."""

    weights: tuple[float, ...]
    interaction_weights: npt.NDArray[np.float64]
    """One weight per ``interaction`` value: the fitted probe folded into one vector."""
    bias: float
    min_probability: float
    min_similarity: float
    embedder: str
    """The embedder whose vectors the weights were fitted on; no other's fit them."""
    l2: float
    """The penalty the weights were fitted with (chosen out-of-fold; refits reuse it)."""

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> HitVerifier:
        return _load(path)

    def probability(
        self,
        query: QuerySlots,
        cached: QuerySlots,
        similarity: float,
        query_vector: npt.NDArray[np.float32],
        cached_vector: npt.NDArray[np.float32],
    ) -> float:
        score = (
            float(pair_features(query, cached, similarity) @ np.asarray(self.weights))
            + float(interaction(query_vector, cached_vector) @ self.interaction_weights)
            + self.bias
        )
        return 1.0 / (1.0 + float(np.exp(-score)))

    def accepts(
        self,
        query: QuerySlots,
        cached: QuerySlots,
        similarity: float,
        query_vector: npt.NDArray[np.float32],
        cached_vector: npt.NDArray[np.float32],
    ) -> bool:
        if similarity < self.min_similarity or other_identifiers(query, cached):
            return False
        probability = self.probability(query, cached, similarity, query_vector, cached_vector)
        return probability >= self.min_probability


def other_identifiers(query: QuerySlots, cached: QuerySlots) -> bool:
    """Both name identifiers, and one of them has no counterpart on the other side: another
    order, ticket or code. A counterpart is the same identifier (codes compared without
    their separators but with their runs of digits: "AB-1234" / "AB1234", not "AB12-3456" /
    "AB1-23456"), or a code whose one long run of digits is the
    number ("RTX 4090" / "RTX4090", "order 12345" / "ORD-12345"). A number inside a longer
    one is another number (12345 / 123456), and so is one of a code's two numbers. A hard
    rule, not a weight: the labelled pairs hold too few identifiers to learn it from."""
    if not (query.identifiers and cached.identifiers):
        return False

    def matched(one: str, others: frozenset[str]) -> bool:
        return any(
            _same_code(one, other) or _sole_number_of(one, other) or _sole_number_of(other, one)
            for other in others
        )

    return not (
        all(matched(q, cached.identifiers) for q in query.identifiers)
        and all(matched(c, query.identifiers) for c in cached.identifiers)
    )


def _same_code(one: str, other: str) -> bool:
    """The same characters and the same runs of digits: "ab-1234" is "ab1234", but
    "ab12-3456" is not "ab1-23456"."""
    return one.replace("-", "") == other.replace("-", "") and re.findall(r"\d+", one) == re.findall(
        r"\d+", other
    )


def _sole_number_of(number: str, code: str) -> bool:
    """Whether ``number`` is the one run of ``IDENTIFIER_DIGITS`` digits or more that
    ``code`` writes: "4090" of "rtx4090", "3456" of "ab12-3456"; not "409" of "rtx4090",
    "123456" of "ab12-3456" (two runs joined), nor "1234" of "a1234b5678" (one of two)."""
    if not number.isdigit() or not any(c.isalpha() for c in code):
        return False
    runs = [run for run in re.findall(r"\d+", code) if len(run) >= IDENTIFIER_DIGITS]
    return runs == [number]


@cache
def _load(path: Path) -> HitVerifier:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        weights = tuple(float(data["weights"][name]) for name in FEATURE_NAMES)
        interaction_weights = np.asarray(data["interaction_weights"], dtype=np.float64)
        if interaction_weights.ndim != 1:
            raise ValueError("interaction_weights must be a list of numbers")
        return HitVerifier(
            weights,
            interaction_weights,
            float(data["bias"]),
            float(data["min_probability"]),
            float(data["min_similarity"]),
            str(data["embedder"]),
            float(data["l2"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StoreError(f"cannot read the cache verifier's weights at {path}: {error}") from error


def _content_sequence(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """The content words in order: no function words, fillers, numbers or punctuation."""
    return tuple(t for t in tokens if _is_content(t, str.isalpha))


def _slot_sequence(slots: QuerySlots) -> tuple[str, ...]:
    """The content words, numbers and relation words in order: what a swap around
    a relation moves ("a refund instead of a replacement", "from 4 to 6 people")."""
    return tuple(t for t in slots.tokens if t in _RELATIONS or _is_content(t, str.isalnum))


def _is_content(token: str, character: Callable[[str], bool]) -> bool:
    """Not a function word or filler, and with a ``character`` (a letter, or a digit too)."""
    return token not in FUNCTION_WORDS and token not in _FILLER and any(map(character, token))


def _content(tokens: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_content_sequence(tokens))


def _has_stem_in(word: str, others: frozenset[str]) -> bool:
    """An inflection of ``word`` is among ``others`` (refund, refunds, refunded)."""
    return any(same_stem(word, other) for other in others)


def _counterpart(word: str, known: set[str]) -> str | None:
    """The known word ``word`` is a typo of: one edit from 4 letters, two from 8."""
    if len(word) < 4 or not word.isalpha():
        return None
    limit = 1 if len(word) < 8 else 2
    for other in known:
        near = abs(len(other) - len(word)) <= limit and len(other) >= 4 and other[0] == word[0]
        if near and _edits(word, other, limit) <= limit:
            return other
    return None


def _edits(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein distance (adjacent swaps count one), stopping past ``limit``."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]
