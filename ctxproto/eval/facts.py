"""Random facts to hide in long contexts: numbers, names, codes, dates, addresses.

Retention only means something when the fact cannot be guessed or found by
accident, so every value is drawn from a seeded ``random.Random`` and each kind
mixes letters and digits differently (RULER and NIAH use one fixed needle; a
compressor tuned to that one sentence would look perfect). ``needle_fact`` is a
third-person statement for a document; ``user_fact`` is something a user says
about themselves in a chat.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

__all__ = ["Fact", "needle_fact", "user_fact"]

_FIRST = ("Amelia", "Tobias", "Ingrid", "Rafael", "Priya", "Desmond", "Lucia", "Kenji", "Marta")
_LAST = ("Okafor", "Lindqvist", "Moreau", "Takahashi", "Castellanos", "Brennan", "Haddad")
_PLACES = ("Alder", "Brimstone", "Calloway", "Dunmore", "Eastwick", "Fairhaven", "Glenrock")
_COLORS = ("amber", "cobalt", "crimson", "emerald", "ivory", "violet", "saffron")
_ANIMALS = ("otter", "falcon", "lynx", "heron", "badger", "marmot", "ibis")
_STREETS = ("Maple Street", "Juniper Lane", "Harbor Road", "Quarry Avenue", "Orchard Way")
_TOWNS = ("Springfield", "Riverton", "Ashford", "Millbrook", "Westfield")
_MONTHS = ("January", "March", "April", "June", "August", "October", "November")
_DISHES = ("Thai green curry", "mushroom risotto", "lentil shepherd's pie", "shakshuka")


@dataclass(frozen=True)
class Fact:
    """A statement to insert, the question that asks for it, and the gold answer."""

    kind: str
    statement: str
    question: str
    answer: str


def _code(rng: random.Random) -> str:
    letters = "".join(rng.choices(string.ascii_uppercase, k=2))
    return f"{letters}-{rng.randint(1000, 9999)}-{rng.choice(string.ascii_uppercase)}"


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _date(rng: random.Random) -> str:
    return f"{rng.choice(_MONTHS)} {rng.randint(2, 28)}, {rng.randint(2026, 2031)}"


def needle_fact(rng: random.Random, index: int) -> Fact:
    """The ``index``-th needle: kinds rotate (number, name, code, date), values are random."""
    kind = ("number", "name", "code", "date")[index % 4]
    if kind == "number":
        key = f"{rng.choice(_COLORS)}-{rng.choice(_ANIMALS)}"
        value = str(rng.randint(1_000_000, 9_999_999))
        return Fact(
            kind,
            f"The special magic number for {key} is {value}.",
            f"What is the special magic number for {key}?",
            value,
        )
    if kind == "name":
        place, value = rng.choice(_PLACES), _name(rng)
        return Fact(
            kind,
            f"The lighthouse on {place} Island is kept by a woman named {value}.",
            f"Who keeps the lighthouse on {place} Island?",
            value,
        )
    if kind == "code":
        color, value = rng.choice(_COLORS), _code(rng)
        return Fact(
            kind,
            f"The access code for the {color} vault is {value}.",
            f"What is the access code for the {color} vault?",
            value,
        )
    place, value = rng.choice(_PLACES), _date(rng)
    return Fact(
        kind,
        f"The {place} bridge opened to traffic on {value}.",
        f"On what date did the {place} bridge open to traffic?",
        value,
    )


def user_fact(rng: random.Random, index: int) -> Fact:
    """The ``index``-th user fact: order number, name, date, address, preference in turn."""
    kind = ("order", "name", "date", "address", "preference")[index % 5]
    if kind == "order":
        value = f"ORD-{rng.randint(100000, 999999)}"
        return Fact(
            kind, f"By the way, my order number is {value}.", "What is my order number?", value
        )
    if kind == "name":
        value = _name(rng)
        return Fact(kind, f"Oh, and my name is {value}.", "What did I say my name is?", value)
    if kind == "date":
        value = _date(rng)
        return Fact(
            kind, f"My sister's wedding is on {value}.", "When is my sister's wedding?", value
        )
    if kind == "address":
        value = f"{rng.randint(10, 9999)} {rng.choice(_STREETS)}, {rng.choice(_TOWNS)}"
        return Fact(
            kind,
            f"If you need to send anything, my address is {value}.",
            "What address did I give you?",
            value,
        )
    value = rng.choice(_DISHES)
    return Fact(
        kind,
        f"For the record, my favourite dinner is {value}.",
        "What did I say my favourite dinner is?",
        value,
    )
