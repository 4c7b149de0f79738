"""The slots of a question that decide its answer: numbers, dates, entities, polarity, scope.

Sentence embeddings place "turn on dark mode" and "turn off dark mode" (or "the
capital of France" and "of Germany") closer together than many true
paraphrases: all-MiniLM-L6-v2 at GPTCache's default threshold of 0.8 hits on
about half of such hard negatives. A cached answer is only as good as the
slots it was computed for, so the semantic cache compares these slots exactly
and leaves the fuzzy part (wording) to the embedding.

Each extractor is a small lexical rule, chosen by category rather than fitted
to examples: normalized numbers (``2`` = ``two``, ordinals), date and time words
with their ``this``/``next``/``last`` modifiers, capitalized or alphanumeric
names in their order, polarity axes (on/off, eat/avoid, ``un``-/``dis``-
prefixes, negation parity), and scope quantifiers (all, every, whole...).
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal

__all__ = [
    "FUNCTION_WORDS",
    "SLOT_NAMES",
    "QuerySlots",
    "edits",
    "one_span_swap",
    "same_stem",
    "slot_conflict",
    "slot_conflicts",
]

_TOKEN = re.compile(
    r"\$?\d[\d,]*(?:\.\d+)?+%?(?:st|nd|rd|th|am|pm|k)?(?![^\W\d]*\d)|[\w][\w.+#-]*(?:'\w+)?|'[^']+'"
)
_NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "hundred": 100,
    "thousand": 1000,
    "dozen": 12,
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "half": 0.5,
    "double": 2,
    "twice": 2,
    "single": 1,
}
_MONTHS = {
    m[:3]: m
    for m in (
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    )
}
_DATE_WORDS = {
    "today",
    "tonight",
    "tomorrow",
    "yesterday",
    "now",
    "morning",
    "afternoon",
    "evening",
    "night",
    "weekend",
    "week",
    "month",
    "year",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "spring",
    "summer",
    "fall",
    "autumn",
    "winter",
    "christmas",
    "thanksgiving",
    "easter",
    "eve",
    "q1",
    "q2",
    "q3",
    "q4",
    "semester",
    "quarter",
}
_DATE_MODIFIERS = {"this", "next", "last", "previous", "coming", "past"}
_POLARITY: dict[str, tuple[str, int]] = {}
for _axis, _positive, _negative in (
    (
        "power",
        "on enable enabled activate start turn-on allow allowed show open opened unlock",
        "off disable disabled deactivate stop turn-off block blocked ban banned hide close closed "
        "closing lock",
    ),
    (
        "amount",
        "increase raise more high higher highest maximum gain add plus up",
        "decrease lower lowest less low minimum loss lose remove minus down reduce",
    ),
    ("inclusion", "include included includes including", "exclude excluded excludes excluding"),
    ("validity", "valid active", "invalid expired inactive"),
    ("transfer", "upload import buy send login", "download export sell receive logout"),
    ("consume", "eat drink take try have", "avoid skip quit"),
    ("quality", "good best better advantages pros benefits", "bad worst worse disadvantages cons"),
    ("heat", "warm warmer hot hotter heat", "cool cooler cold colder"),
    ("answer", "accept yes agree", "decline reject refuse"),
    ("cipher", "encrypt encrypted", "decrypt decrypted"),
    ("frequency", "always", "never"),
):
    for _word in _positive.split():
        _POLARITY[_word] = (_axis, 1)
    for _word in _negative.split():
        _POLARITY[_word] = (_axis, -1)
_NEGATIONS = {"not", "no", "never", "without", "cannot", "nor"}
_NEGATIVE_PREFIXES = ("un", "dis", "de", "in", "im", "non")
_SCOPE_WORDS = {
    "all",
    "every",
    "each",
    "entire",
    "whole",
    "only",
    "both",
    "everything",
    "everyone",
    "everybody",
    "worldwide",
    "globally",
    "publicly",
    "multiple",
    "several",
}
_PARTICLES = {"on", "off", "in", "out"}
FUNCTION_WORDS = frozenset(
    " ".join(
        (
            "a an the of to in on for at by with from into about as and or but if then so",
            "than that this these those is are was were be been being am do does did done",
            "have has had can could should would will shall may might must i me my you your",
            "we our us he him his she her they them their it its what which who whom whose",
            "when where why how there here just also very really please tell explain know",
            "help possible way ways steps step process need want find recommend suggest tips",
            "any some someone something get go make s",
        )
    ).split()
)
SLOT_NAMES = (
    "number",
    "date",
    "entity",
    "direction",
    "negation",
    "polarity",
    "prefix",
    "scope",
    "substitution",
)
"""What ``slot_conflicts`` can name, in the order ``slot_conflict`` checks them."""
IDENTIFIER_DIGITS = 4
"""A number written with this many digits or more is an identifier."""
CODE_LENGTH = 5
"""A code (letters and at least two digits) this long or longer is an identifier."""

_YEAR = re.compile(r"(1[89]|20)\d\d")
"""A year: a date, not a number or an identifier."""

_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[])
"""Decimal arithmetic that never rounds, whatever context the application set."""

MAX_SWAP_TOKENS = 3
"""A one-span edit of at most this many tokens per side, everything else identical, is a slot
swap ("refund policy for digital / physical products"), not a rewording."""


@dataclass(frozen=True)
class QuerySlots:
    """The slots of one question (see the module docstring)."""

    numbers: frozenset[str]
    dates: frozenset[str]
    entities: tuple[str, ...]
    polarity: frozenset[tuple[str, int]]
    negated: bool
    scope: frozenset[str]
    tokens: tuple[str, ...]
    identifiers: frozenset[str] = frozenset()
    """Numbers written with at least ``IDENTIFIER_DIGITS`` digits (by value, after the
    zeros written before it; not years) and codes of ``CODE_LENGTH`` letters and digits or
    more with at least two digits (their groups of letters and digits joined by "-"):
    order, ticket and tracking numbers, prices written out, reference codes. Two questions
    that both name some, and not the same ones, ask about different things however small
    the edit (``verifier.other_identifiers`` says which are the same)."""

    @property
    def words(self) -> frozenset[str]:
        return frozenset(self.tokens)

    @classmethod
    def of(cls, text: str) -> QuerySlots:
        """The slots of ``text``; memoized, since a cache is asked the same questions again."""
        return _slots_of(text)

    @classmethod
    def extract(cls, text: str) -> QuerySlots:
        """The slots of ``text``, computed afresh (``of`` remembers them)."""
        raw = _TOKEN.findall(text)
        tokens = [t.lower().removesuffix("'s").strip("'") for t in raw]
        numbers: set[str] = set()
        dates: set[str] = set()
        polarity: set[tuple[str, int]] = set()
        negations = 0
        values = [_number(token) for token in tokens]
        for i, (token, number) in enumerate(zip(tokens, values, strict=True)):
            if number is not None:
                numbers.add(number)
            previous = tokens[i - 1] if i else ""
            month = _MONTHS.get(token[:3]) if token[:3] in _MONTHS and token.isalpha() else None
            modal_may = month == "may" and (i == 0 or raw[i] != "May")
            if month and (len(token) == 3 or token == month) and not modal_may:
                dates.add(month)
            elif token in _DATE_WORDS or re.fullmatch(r"\d{1,2}(?::\d\d)?(?:am|pm)", token):
                dates.add(f"{previous}:{token}" if previous in _DATE_MODIFIERS else token)
            elif _YEAR.fullmatch(token):
                dates.add(token)
            if token in _NEGATIONS or token.endswith("n't"):
                negations += 1
            axis = _polarity_of(tokens, i)
            if axis is not None:
                polarity.add(axis)
        entities = tuple(
            token
            for i, (token, original, number) in enumerate(zip(tokens, raw, values, strict=True))
            if _is_entity(original, first=i == 0) and number is None and token not in dates
        )
        return cls(
            numbers=frozenset(numbers),
            dates=frozenset(dates),
            entities=entities,
            polarity=frozenset(polarity),
            negated=negations % 2 == 1,
            scope=frozenset(t for t in tokens if t in _SCOPE_WORDS),
            tokens=tuple(tokens),
            identifiers=frozenset(filter(None, map(_identifier, tokens, values))),
        )


@functools.lru_cache(maxsize=4096)
def _slots_of(text: str) -> QuerySlots:
    return QuerySlots.extract(text)


def slot_conflict(a: QuerySlots, b: QuerySlots) -> str | None:
    """The first slot (in ``SLOT_NAMES`` order) on which two questions differ, or ``None``."""
    conflicts = slot_conflicts(a, b)
    return next((name for name in SLOT_NAMES if name in conflicts), None)


@functools.lru_cache(maxsize=4096)
def slot_conflicts(
    a: QuerySlots, b: QuerySlots, *, names_in_any_case: bool = False
) -> frozenset[str]:
    """The names of every slot on which two questions differ (empty when they agree).

    Memoized: slots are immutable, and a cache hit compares the same pair each time.

    With ``names_in_any_case`` an entity counts as present in the other question
    when its word is there in any case ("netflix" / "Netflix"): typed casually,
    names lose their capitals. The rule guard keeps exact entities; the learned
    verifier, which weighs the conflict against everything else, does not.
    """
    found: set[str] = set()
    if a.numbers != b.numbers:
        found.add("number")
    if a.dates != b.dates:
        found.add("date")
    if names_in_any_case:
        entity_differs = bool(set(a.entities) - b.words or set(b.entities) - a.words)
    else:
        entity_differs = set(a.entities) != set(b.entities)
    if entity_differs:
        found.add("entity")
    if _direction_conflict(a, b):
        found.add("direction")
    if a.negated != b.negated:
        found.add("negation")
    for axis in {axis for axis, _ in a.polarity} & {axis for axis, _ in b.polarity}:
        if {s for x, s in a.polarity if x == axis} != {s for x, s in b.polarity if x == axis}:
            found.add("polarity")
    if _prefix_negated(a.words, b.words) or _prefix_negated(b.words, a.words):
        found.add("prefix")
    if a.scope != b.scope:
        found.add("scope")
    if one_span_swap(a.tokens, b.tokens):
        found.add("substitution")
    return frozenset(found)


def _direction_conflict(a: QuerySlots, b: QuerySlots) -> bool:
    """One end of a movement differs (London→Paris / London→Rome), or one name or
    number sits at the other end ("a transfer to Germany" / "from Germany",
    "from 4 to 6 people" / "from 6 to 4")."""
    a_ends, b_ends = _directions(a), _directions(b)
    if any(a_ends[p] != b_ends[p] for p in a_ends.keys() & b_ends.keys()):
        return True
    a_roles = {end: p for p, end in a_ends.items()}
    b_roles = {end: p for p, end in b_ends.items()}
    return any(a_roles[end] != b_roles[end] for end in a_roles.keys() & b_roles.keys())


def _directions(slots: QuerySlots) -> dict[str, str]:
    """Which name or number follows "from", "to" or "into": London→Paris is not
    Paris→London."""
    tokens = slots.tokens
    out: dict[str, str] = {}
    for i, token in enumerate(tokens[:-1]):
        if token in ("from", "to", "into"):
            following = (
                tokens[i + 2]
                if tokens[i + 1] in ("the", "a", "an") and i + 2 < len(tokens)
                else tokens[i + 1]
            )
            if following in slots.entities or _number(following) is not None:
                out["to" if token == "into" else token] = following
    return out


def edits(a: tuple[str, ...], b: tuple[str, ...]) -> list[tuple[str, int, int, int, int]]:
    """The spans that differ between two token sequences (difflib opcodes, no ``equal``)."""
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    return [op for op in matcher.get_opcodes() if op[0] != "equal"]


def one_span_swap(
    a: tuple[str, ...], b: tuple[str, ...], *, max_tokens: int = MAX_SWAP_TOKENS
) -> bool:
    """One span of at most ``max_tokens`` per side replaced by unrelated content words,
    everything else in place: a slot swap ("refund policy for digital / physical
    products"), not a rewording. Function words in the span do not count as content."""
    changes = edits(a, b)
    if len(changes) != 1 or changes[0][0] != "replace":
        return False
    _, a_start, a_end, b_start, b_end = changes[0]
    if a_end - a_start > max_tokens or b_end - b_start > max_tokens:
        return False
    a_content = [t for t in a[a_start:a_end] if t not in FUNCTION_WORDS]
    b_content = [t for t in b[b_start:b_end] if t not in FUNCTION_WORDS]
    if not a_content or not b_content:
        return False
    return not any(same_stem(x, y) for x in a_content for y in b_content)


def same_stem(x: str, y: str) -> bool:
    """Inflections of one word (share, sharing; virus, viruses), not different words."""
    if x == y:
        return True
    common = next(
        (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y))
    )
    return common >= 4 and common >= min(len(x), len(y)) - 1


def _polarity_of(tokens: list[str], i: int) -> tuple[str, int] | None:
    """The polarity a token carries; a particle ("on", "out") only after turn/switch/log/sign."""
    token = tokens[i]
    if token not in _PARTICLES:
        return _POLARITY.get(token)
    verbs = tokens[max(0, i - 3) : i]
    if token in ("on", "off") and ("turn" in verbs or "switch" in verbs):
        return _POLARITY[token]
    if token in ("in", "out") and i and tokens[i - 1] in ("log", "sign"):
        return _POLARITY["login" if token == "in" else "logout"]
    return None


def _number(token: str) -> str | None:
    if token in _NUMBER_WORDS:
        return f"{Decimal(_NUMBER_WORDS[token]).normalize(_EXACT):f}"
    match = re.fullmatch(r"\$?(\d[\d,]*(?:\.\d+)?)(%|st|nd|rd|th|k)?", token)
    if match is None or _YEAR.fullmatch(token):
        return None
    # Exact, not a float: order 3622531882 is not order 3622531880.
    value = Decimal(match.group(1).replace(",", ""))
    suffix = match.group(2)
    value = _EXACT.multiply(value, 1000) if suffix == "k" else value
    return f"{value.normalize(_EXACT):f}{'%' if suffix == '%' else ''}"


def _identifier(token: str, number: str | None) -> str | None:
    """``token`` (whose value as a number is ``number``) as an identifier: a number by its
    value after the zeros written before it ("0,012,345" is "0012345"), a code as its
    groups of letters and digits joined by "-" ("AB-1234." is "ab-1234", "AB12-3456" is
    "ab12-3456"); None if it is neither, or a year."""
    if _YEAR.fullmatch(token.rstrip(",")):
        return None
    digits = sum(c.isdigit() for c in token)
    if number is not None:
        if digits < IDENTIFIER_DIGITS:
            return None
        # Zero-padded numbering: order 0012345 is not order 12345.
        whole = re.sub(r"\D", "", token.split(".")[0])
        zeros = min(len(whole) - len(whole.lstrip("0")), len(whole) - 1)
        return "0" * max(zeros, 0) + number
    groups = re.findall(r"[0-9a-z]+", token)
    bare = "".join(groups)
    is_code = digits >= 2 and len(bare) >= CODE_LENGTH and any(c.isalpha() for c in bare)
    return "-".join(groups) if is_code else None


def _is_entity(original: str, *, first: bool) -> bool:
    if original.startswith("'"):
        return True
    if any(ch.isdigit() for ch in original) and any(ch.isalpha() for ch in original):
        return True
    has_inner_capital = any(ch.isupper() for ch in original[1:]) and not original.isupper()
    if has_inner_capital or (original.isupper() and len(original) > 1):
        return True
    return original[:1].isupper() and not first and original.lower() not in {"i", "i'm", "i've"}


def _inflection_of(word: str, stem: str) -> bool:
    return word.startswith(stem) and len(word) - len(stem) <= 2


def _prefix_negated(words: frozenset[str], others: frozenset[str]) -> bool:
    """A prefixed antonym: ``unsubscribe`` / ``subscribe``, ``unsafe`` / ``safe``."""
    for word in words - others:
        for prefix in _NEGATIVE_PREFIXES:
            stem = word.removeprefix(prefix)
            if stem != word and len(stem) >= 3 and any(_inflection_of(o, stem) for o in others):
                return True
    return False
