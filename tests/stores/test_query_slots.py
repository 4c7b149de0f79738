"""The question slots the semantic cache's guard compares, and their memo."""

from __future__ import annotations

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
