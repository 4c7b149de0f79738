from ctxproto.runtime.speculation import MAX_DRAFT_TOKENS, PromptLookup


def test_drafts_what_followed_the_latest_earlier_occurrence():
    sequence = [5, 6, 7, 1, 2, 5, 6, 7, 3, 4, 9, 5, 6, 7]
    # "5 6 7" occurred at 0 and 5; the latest (followed by 3 4 9) wins.
    assert PromptLookup().draft(sequence, 3) == [3, 4, 9]


def test_needs_three_matching_tokens_and_never_matches_itself():
    lookup = PromptLookup()
    assert lookup.draft([1, 2, 3], 4) == []  # only itself
    assert lookup.draft([1, 2, 3, 9, 2, 3], 4) == []  # "2 3" repeats, not "9 2 3"
    assert PromptLookup().draft([4], 4) == []


def test_follows_a_growing_sequence_and_respects_the_limit():
    lookup = PromptLookup()
    sequence = [10, 11, 12, 13, 14, 15, 16, 10, 11, 12]
    assert lookup.draft(sequence, 2) == [13, 14]
    sequence += [13, 14]
    assert lookup.draft(sequence, 100) == [15, 16, 10, 11, 12, 13]
    assert lookup.draft(sequence, 0) == []


def test_draft_length_adapts_to_acceptance():
    lookup = PromptLookup()
    assert lookup.draft_tokens == MAX_DRAFT_TOKENS
    for _ in range(MAX_DRAFT_TOKENS + 2):
        lookup.record(drafted=4, accepted=1)
    assert lookup.draft_tokens == 1
    assert lookup.draft([1, 2, 3, 4, 1, 2, 3], 8) == [4]
    lookup.record(drafted=1, accepted=1)
    assert lookup.draft_tokens == 3
    for _ in range(MAX_DRAFT_TOKENS):
        lookup.record(drafted=3, accepted=3)
    assert lookup.draft_tokens == MAX_DRAFT_TOKENS
