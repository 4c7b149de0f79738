from ctxproto.runtime.speculation import MAX_DRAFT_TOKENS, MAX_PREDICTED_TOKENS, PromptLookup


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


def test_a_prediction_is_drafted_from_the_answers_first_token():
    lookup = PromptLookup(prediction=[7, 8, 9], answer_start=4)
    assert lookup.draft([1, 2, 3, 4], 8) == [7, 8, 9]
    assert lookup.draft([1, 2, 3, 4, 7], 8) == [8, 9]  # it follows the answer


def test_a_prediction_is_picked_up_again_after_the_answer_departs_from_it():
    prediction = [20, 21, 22, 23, 24, 25, 26, 27]
    lookup = PromptLookup(prediction=prediction, answer_start=1)
    # The answer rewrote 22 as 99 and no prompt n-gram matches: no draft...
    assert lookup.draft([0, 20, 21, 99], 8) == []
    # ...until its last three tokens are found in the prediction again.
    assert lookup.draft([0, 20, 21, 99, 23, 24, 25], 8) == [26, 27]


def test_a_prediction_spent_falls_back_to_the_prompt():
    lookup = PromptLookup(prediction=[5], answer_start=7)
    sequence = [1, 2, 3, 4, 1, 2, 3]
    assert lookup.draft(sequence, 8) == [5]
    assert lookup.draft([*sequence, 5], 8) == []  # spent, and "2 3 5" is new
    assert lookup.draft([*sequence, 5, 1, 2, 3], 8) == [5, 1, 2, 3]  # from prompt + answer


def test_prediction_drafts_grow_long_are_halved_on_a_miss_and_are_counted():
    prediction = list(range(100, 400))
    lookup = PromptLookup(prediction=prediction, answer_start=0)
    done: list[int] = []
    sizes: list[int] = []
    while len(sizes) < 12:  # an answer that follows the prediction all along
        draft = lookup.draft(done, 1000)
        sizes.append(len(draft))
        lookup.record(drafted=len(draft), accepted=len(draft))
        done = prediction[: len(done) + len(draft) + 1]
    assert sizes[0] == MAX_DRAFT_TOKENS and max(sizes) == MAX_PREDICTED_TOKENS
    lookup.record(drafted=MAX_PREDICTED_TOKENS, accepted=3)  # then it departs
    assert lookup.predicted_tokens == MAX_PREDICTED_TOKENS // 2
    # OpenAI's counts: the prediction's tokens the answer repeated, and the rest of it.
    answer = [*done, *prediction[len(done) : len(done) + 3], 7, 7]
    lookup.settle(answer)
    assert lookup.accepted_prediction_tokens == len(done) + 3
    assert lookup.rejected_prediction_tokens == len(prediction) - len(done) - 3


def test_prompt_drafts_and_prediction_drafts_adapt_apart():
    prediction = [50, 51, 52, 53, 54, 55, 56, 57]
    prompt = [*range(10, 40), 1, 2, 3, *range(60, 90)]
    lookup = PromptLookup(prediction=prediction, answer_start=len(prompt))
    sequence = [*prompt, 99, 1, 2, 3]  # the answer left the prediction at once
    for _ in range(10):  # fully confirmed drafts from the prompt...
        assert 0 < len(lookup.draft(sequence, 100)) <= MAX_DRAFT_TOKENS
        lookup.record(drafted=2, accepted=2)
    assert lookup.draft_tokens == MAX_DRAFT_TOKENS
    # ...leave the prediction's drafts where they start, and count none of it accepted.
    assert lookup.predicted_tokens == MAX_DRAFT_TOKENS
    assert lookup.draft([*sequence, 50, 51, 52], 100) == prediction[3 : 3 + MAX_DRAFT_TOKENS]
    assert (lookup.accepted_prediction_tokens, lookup.rejected_prediction_tokens) == (0, 8)
