"""Labelled question pairs for the semantic cache, built from hand-written seeds.

``python -m ctxproto.bench.cache_pairs`` rewrites
``tests/fixtures/cache_pairs/{dev,test,independent}.jsonl`` from
``tests/fixtures/cache_pairs/seeds_*.txt`` and the older
``tests/fixtures/semantic_cache_pairs.jsonl``; the output is deterministic.

A seed is a cached question with hand-written paraphrases (should hit) and
hand-written near misses that change one slot: negation or antonym, entity,
number or date, scope (should not hit). Registers are layered on by rule, the
same way for hits and near misses, so noise alone never tells them apart:
typos, lower case without punctuation, chatty openers and closers, dropped
articles. Near-repeats (the cached question retyped with such noise) are their
own category. Seeds are split into dev and test as whole groups, so no
question is tuned on in dev and scored in test.

``independent`` is a second held-out split, from seeds written later by other
writers (``independent_seeds_*.txt``) with the same categories and rules but
not the same hand: 231 cached questions across sixteen domains, four
paraphrases each (one synonym swap, one restructuring, one terse, one chatty or
non-native) and three or four near misses, about one in four of which also
rewords something besides its slot. Nothing is fitted on it; it measures how
the guard holds on questions phrased by someone else (the slot rules were
revised once after reading its false hits). Blocks within 0.88 cosine of a
test question were dropped when it was written, so the two held-out splits
do not share questions.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CATEGORIES", "FOLDER", "build", "load_pairs"]

FOLDER = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "cache_pairs"
LEGACY = FOLDER.parent / "semantic_cache_pairs.jsonl"
CATEGORIES = ("paraphrase", "near_repeat", "negation", "entity", "number_date", "scope")
_NEGATIVE = {"N": "negation", "E": "entity", "D": "number_date", "S": "scope"}
_LEGACY_CATEGORY = {"number": "number_date", "date": "number_date"}
_OPENERS = ("hi, ", "hey there! ", "quick question: ", "hello, ", "sorry to bother you, ", "um ")
_CLOSERS = (" thanks", " thx!", " please", " pls help", " ??", " :)", " asap")
_KEYBOARD = dict(zip("qwertyuiopasdfghjklzxcvbnm", "wqeryutoipsadgfhkjlxzvcnbn", strict=True))


@dataclass
class _Seed:
    domain: str
    question: str
    paraphrases: list[str] = field(default_factory=list)
    negatives: list[tuple[str, str]] = field(default_factory=list)


def load_pairs(split: str) -> list[dict[str, object]]:
    """The rows of one split (``dev``, ``test`` or ``independent``)."""
    text = (FOLDER / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line]


def build() -> dict[str, list[dict[str, object]]]:
    """Every pair, by split (see the module docstring)."""
    seeds = _read_seeds(sorted(FOLDER.glob("seeds_*.txt")))
    order = list(range(len(seeds)))
    random.Random(1500).shuffle(order)
    dev = set(order[: len(order) // 2])
    out: dict[str, list[dict[str, object]]] = {"dev": [], "test": [], "independent": []}
    for n, seed in enumerate(seeds):
        out["dev" if n in dev else "test"].extend(_pairs_of(seed))
    for seed in _read_seeds(sorted(FOLDER.glob("independent_seeds_*.txt"))):
        out["independent"].extend(_pairs_of(seed))
    for line in LEGACY.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        category = _LEGACY_CATEGORY.get(row["category"], row["category"])
        split = "dev" if row["split"] == "train" else "test"
        out[split].append(_row(category, row["a"], row["b"], "chatbot", "written"))
    return out


def _read_seeds(paths: list[Path]) -> list[_Seed]:
    seeds: list[_Seed] = []
    domain = ""
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            tag, _, text = line.partition(" ")
            if not line.strip() or tag == "#":
                continue
            if tag == "@":
                domain = text
            elif tag == "Q":
                seeds.append(_Seed(domain, text))
            elif tag == "P":
                seeds[-1].paraphrases.append(text)
            elif tag in _NEGATIVE:
                seeds[-1].negatives.append((_NEGATIVE[tag], text))
            else:
                raise ValueError(f"{path.name}: unknown line {line!r}")
    return seeds


def _pairs_of(seed: _Seed) -> list[dict[str, object]]:
    rng = random.Random(hashlib.sha256(seed.question.encode()).hexdigest())
    q, d = seed.question, seed.domain
    rows = [_row("paraphrase", q, p, d, "written") for p in seed.paraphrases]
    rows.append(_row("paraphrase", seed.paraphrases[-1], q, d, "written"))
    noisy, register = _noise(seed.paraphrases[0], rng)
    rows.append(_row("paraphrase", q, noisy, d, register))
    for _ in range(2):
        noisy, register = _noise(q, rng)
        rows.append(_row("near_repeat", q, noisy, d, register))
    for category, negative in seed.negatives:
        rows.append(_row(category, q, negative, d, "written"))
        if rng.random() < 0.5:
            noisy, register = _noise(negative, rng)
            rows.append(_row(category, q, noisy, d, register))
        else:
            rows.append(_row(category, negative, q, d, "written, reversed"))
    return rows


def _row(category: str, a: str, b: str, domain: str, register: str) -> dict[str, object]:
    return {
        "category": category,
        "a": a,
        "b": b,
        "hit": category in ("paraphrase", "near_repeat"),
        "domain": domain,
        "register": register,
    }


def _noise(text: str, rng: random.Random) -> tuple[str, str]:
    """``text`` with one or two register changes, and their names."""
    kinds = rng.sample(["typos", "lower", "chatty", "terse"], k=rng.choice((1, 1, 2)))
    for kind in kinds:
        if kind == "typos":
            text = _typos(text, rng)
        elif kind == "lower":
            text = re.sub(r"[?!.,]", "", text.lower())
        elif kind == "chatty":
            text = rng.choice(_OPENERS) + text[0].lower() + text[1:] + rng.choice(_CLOSERS)
        else:
            text = re.sub(r"\b(?:the|a|an) ", "", text, flags=re.IGNORECASE)
    return text, "+".join(kinds)


def _typos(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 5]
    for i in rng.sample(long_words, k=min(len(long_words), rng.choice((1, 1, 2)))):
        words[i] = _typo(words[i], rng)
    return " ".join(words)


def _typo(word: str, rng: random.Random) -> str:
    letters = [i for i, c in enumerate(word) if c.isalpha()]
    i = rng.choice(letters[1:-1])
    kind = rng.choice(("swap", "drop", "double", "neighbour"))
    if kind == "swap" and i + 1 < len(word) and word[i + 1].isalpha():
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "neighbour" and word[i].lower() in _KEYBOARD:
        return word[:i] + _KEYBOARD[word[i].lower()] + word[i + 1 :]
    return word[:i] + word[i + 1 :]


def main() -> None:
    for split, rows in build().items():
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (FOLDER / f"{split}.jsonl").write_text(lines, encoding="utf-8")
        print(f"{split}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
