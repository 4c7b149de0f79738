"""The question slots the semantic cache's guard compares, and their memo."""

from __future__ import annotations

import decimal

from ctxproto.stores.semantic_cache.query_slots import QuerySlots, slot_conflict, slot_conflicts


def test_slots_are_remembered_per_text_and_equal_a_fresh_extraction() -> None:
    text = "Turn off dark mode on my 2 phones next Monday"
    assert QuerySlots.of(text) is QuerySlots.of(text)  # a repeated question is not re-read
    assert QuerySlots.of(text) == QuerySlots.extract(text)


def test_remembered_conflicts_are_the_ones_computed_afresh() -> None:
    on = QuerySlots.of("How do I turn on dark mode?")
    off = QuerySlots.of("How do I turn off dark mode?")
    assert slot_conflict(on, off) is not None
    assert slot_conflicts(on, off) == slot_conflicts.__wrapped__(on, off)
    assert slot_conflicts(on, on) == slot_conflicts.__wrapped__(on, on) == frozenset()
    assert slot_conflicts(on, off, names_in_any_case=True) == slot_conflicts.__wrapped__(
        on, off, names_in_any_case=True
    )


def test_a_name_or_number_moved_to_the_other_end_of_a_movement_conflicts() -> None:
    """Both ends compared: the same place after "to" in one and "from" in the other,
    and numbers at the ends of a change, not only names after the same preposition."""

    def conflicts(a: str, b: str) -> frozenset[str]:
        return slot_conflicts(QuerySlots.of(a), QuerySlots.of(b))

    to_germany = "How long does an international transfer to Germany take?"
    assert "direction" in conflicts(to_germany, to_germany.replace(" to ", " from "))
    assert "direction" in conflicts(
        "Can I change my booking from 4 to 6 people?", "Can I change my booking from 6 to 4 people?"
    )
    assert "direction" in conflicts("flights from London to Paris", "flights from London to Rome")
    assert "direction" not in conflicts(
        "flights from London to Paris", "flights to Paris from London"
    )


def test_extremes_inclusion_and_validity_are_polarity_axes() -> None:
    def conflicts(a: str, b: str) -> frozenset[str]:
        return slot_conflicts(QuerySlots.of(a), QuerySlots.of(b))

    assert "polarity" in conflicts(
        "What's the maximum daily dose of paracetamol?",
        "What's the lowest daily dose of paracetamol?",
    )
    assert "polarity" in conflicts(
        "Are TVs included in the price match?", "Are TVs excluded from the price match?"
    )
    assert "polarity" in conflicts(
        "Do I need an ESTA with a valid US visa?", "Do I need an ESTA with an expired US visa?"
    )


def test_bounds_minutes_and_product_names_are_not_amount_polarity() -> None:
    """ "min" is minutes as often as minimum, "Max" names products, and "at least" /
    "or more" state one bound two ways."""

    def conflicts(a: str, b: str) -> frozenset[str]:
        return slot_conflicts(QuerySlots.of(a), QuerySlots.of(b))

    assert "polarity" not in conflicts(
        "Is there a cheaper HBO Max plan?", "Is there an HBO Max plan at a lower price?"
    )
    assert "polarity" not in conflicts(
        "Can I bring at least 2 bags?", "Can I bring 2 or more bags?"
    )


def test_an_identifier_with_digits_after_its_letters_is_one_name() -> None:
    """Read as a number and a word, two hex ids made a pair look like a small rewording
    (tests/stores/test_semantic_cache.py); whole, they are two different names."""
    slots = QuerySlots.extract("Show the logs of request 9b7ec13952ad and parcel 1Z999AA1")
    assert slots.numbers == frozenset()
    assert {"9b7ec13952ad", "1z999aa1"} <= set(slots.entities)
    other = QuerySlots.extract("Show the logs of request 9c01aa77e2f0 and parcel 1Z999AA1")
    assert slot_conflict(slots, other) == "entity"
    # Amounts, ordinals and a number that ends a sentence stay numbers.
    amounts = QuerySlots.extract("on the 1st, for $1,200.50 or 10k")
    assert amounts.numbers == {"1", "1200.5", "10000"}
    assert QuerySlots.extract("It closes at 5.").numbers == {"5"}
    # Dotted groups stay numbers too: versions and addresses differ in a number slot.
    assert QuerySlots.extract("Python 3.11.2").numbers == {"3.11", "2"}
    assert (
        slot_conflict(
            QuerySlots.extract("ping 192.168.1.10"), QuerySlots.extract("ping 192.168.1.11")
        )
        == "number"
    )


def test_long_numbers_are_read_exactly() -> None:
    """Read as floats of six significant digits, two order numbers were one number."""
    order = QuerySlots.extract("Where is order 3622531882?")
    other = QuerySlots.extract("Where is order 3622531880?")
    assert order.numbers == {"3622531882"}
    assert slot_conflict(order, other) == "number"
    assert QuerySlots.extract("10,000 steps").numbers == QuerySlots.extract("10000 steps").numbers


def test_identifiers_are_long_numbers_and_codes_with_digits() -> None:
    def identifiers(text: str) -> frozenset[str]:
        return QuerySlots.extract(text).identifiers

    assert identifiers("Where is order 5NZ8VP, parcel 1Z999AA1 or ticket #4521?") == {
        "5nz8vp",
        "1z999aa1",
        "4521",
    }
    assert identifiers("10,000 steps") == identifiers("10000 steps") == {"10000"}
    # Short numbers, amounts written short, years, product names and plain words are not.
    assert identifiers("a 4kg cat, 4k video, 128GB, A19, BR30, 2FA, in 2024, as of 1999") == set()
    # A code keeps its groups apart (the verifier compares codes without the "-").
    assert identifiers("Track order AB-1234.") == {"ab-1234"}
    assert identifiers("track order AB1234") == {"ab1234"}
    # Zero-padded numbering stays padded; a decimal's zero is no padding.
    assert identifiers("order 0012345") == identifiers("order 0,012,345") == {"0012345"}
    assert identifiers("a rate of 0.12345") == {"0.12345"}


def test_numbers_stay_exact_whatever_decimal_context_the_application_set() -> None:
    with decimal.localcontext() as context:
        context.prec = 6
        context.traps[decimal.Inexact] = True
        slots = QuerySlots.extract("Where is order 3622531882, or 10k of them?")
    assert slots.numbers == {"3622531882", "10000"}
