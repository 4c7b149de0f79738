"""Speculative prompt-lookup decoding: the same tokens as one-token steps, fewer forwards."""

from collections.abc import Iterator

import pytest
import torch

from ctxproto.runtime import Engine, GenerationParams
from tests.runtime.conftest import chat

pytestmark = pytest.mark.models

# A document the answers copy from, and questions that make them copy (or not).
MANUAL = (
    "You are the Acme support assistant. Answer by quoting the manual.\n\n"
    "Manual: To factory-reset the R7 router, hold the reset button on the back for "
    "10 seconds until the light blinks blue, then wait two minutes for it to restart. "
    "To update the firmware, open the Acme app, go to Settings > Devices > R7 > "
    "Firmware and tap Update now. The M2 mesh extender pairs with the R7 when you "
    "press the WPS button on both devices within two minutes."
)
COPYING = [
    chat("How do I factory-reset the R7 router?", system=MANUAL),
    chat("How do I update the firmware of the R7?", system=MANUAL),
    chat("Repeat the manual word for word.", system=MANUAL),
]
NOT_COPYING = [
    chat("Write a haiku about the sea.", system="You are a poet."),
    chat("What is 17 times 23?", system="You are terse."),
]
GREEDY = GenerationParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def reference(lm) -> Iterator[Engine]:
    """One-token steps, no prefix cache: what every speculative answer must equal."""
    with Engine(speculate=False, prefix_cache=False, max_batch_size=1) as running:
        yield running


@pytest.fixture(scope="module")
def speculating(lm) -> Iterator[Engine]:
    with Engine() as running:
        yield running


def answer(
    engine: Engine, messages: list[dict[str, str]], params: GenerationParams = GREEDY
) -> tuple[list[int], str, str, int]:
    handle = engine.submit(engine.encode_chat(messages), params)
    completion = handle.result()
    return handle.token_ids, completion.text, completion.finish_reason, handle.forward_passes


def test_speculation_is_the_default_and_keeps_greedy_tokens(reference, speculating):
    assert speculating.speculate
    passes = tokens = 0
    for messages in COPYING + NOT_COPYING:
        ids, text, reason, forwards = answer(speculating, messages)
        assert (ids, text, reason) == answer(reference, messages)[:3]
        passes, tokens = passes + forwards, tokens + len(ids)
    # Copying answers accept drafts: fewer model calls than tokens overall.
    assert passes < tokens


def test_copying_answer_takes_fewer_forward_passes(reference, speculating):
    ids, _, _, forwards = answer(speculating, COPYING[2])
    reference_ids, _, _, reference_forwards = answer(reference, COPYING[2])
    assert ids == reference_ids
    assert reference_forwards == len(reference_ids)
    assert forwards < len(ids) * 2 // 3


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 9])
def test_token_limit_is_exact(reference, speculating, limit):
    params = GenerationParams(max_new_tokens=limit)
    got = answer(speculating, COPYING[2], params)
    assert got[:3] == answer(reference, COPYING[2], params)[:3]
    assert len(got[0]) == limit and got[2] == "length"


def test_stop_string_inside_an_accepted_draft_ends_where_plain_decoding_does(
    reference, speculating
):
    full_ids, full_text, _, _ = answer(reference, COPYING[2])
    # Stop strings at several places in the copied answer, each cut exactly there.
    words = full_text.split()
    for stop in (words[3], words[len(words) // 2], words[-2]):
        params = GenerationParams(max_new_tokens=24, stop=[stop])
        got = answer(speculating, COPYING[2], params)
        expected = answer(reference, COPYING[2], params)
        assert got[:3] == expected[:3]
        assert got[2] == "stop" and stop not in got[1]
        assert len(got[0]) < len(full_ids)


def test_cached_kv_is_that_of_the_emitted_tokens(lm):
    """The prefix cache receives prompt + answer (all but the last token), and its KV
    equals what one-token steps compute: rejected drafts leave nothing behind."""
    messages = COPYING[0]
    with Engine() as speculating, Engine(speculate=False) as plain:
        prompt = speculating.encode_chat(messages)
        ids, *_ = answer(speculating, messages)
        plain_ids, *_ = answer(plain, messages)
        assert ids == plain_ids
        tokens = prompt + ids
        length = len(tokens) - 1
        assert speculating.cache.match_length(tokens, "") == length
        got = speculating.cache.match_prefix(tokens[:length], "")
        expected = plain.cache.match_prefix(tokens[:length], "")
        assert got.length == expected.length == length
        got_kv = torch.cat(list(got.spans), dim=3)
        expected_kv = torch.cat(list(expected.spans), dim=3)
        torch.testing.assert_close(got_kv, expected_kv, rtol=1e-4, atol=1e-4)
        # The next turn reuses that answer and still decodes the same tokens.
        follow_up = [
            *messages,
            {"role": "assistant", "content": speculating.tokenizer.decode(ids)},
            {"role": "user", "content": "And how long does the restart take?"},
        ]
        assert answer(speculating, follow_up)[0] == answer(plain, follow_up)[0]


def test_sampling_requests_decode_one_token_per_forward(speculating):
    sampled = speculating.submit(
        speculating.encode_chat(COPYING[2]), GenerationParams(temperature=0.7, seed=1)
    )
    sampled.result()
    assert sampled.forward_passes == len(sampled.token_ids)


def test_concurrent_requests_equal_the_reference(reference, speculating):
    """Rows decoded together take plain steps; the one left alone speculates."""
    limits = [GenerationParams(max_new_tokens=n) for n in (4, 24, 12)]
    handles = [
        speculating.submit(speculating.encode_chat(m), p)
        for m, p in zip(COPYING, limits, strict=True)
    ]
    for handle, messages, params in zip(handles, COPYING, limits, strict=True):
        handle.result()
        assert handle.token_ids == answer(reference, messages, params)[0]


def test_switched_off(lm):
    with Engine(speculate=False) as engine:
        ids, _, _, forwards = answer(engine, COPYING[2])
    assert forwards == len(ids)


@pytest.mark.parametrize(("messages", "length"), [(NOT_COPYING[1], 48), (COPYING[0], 100)])
def test_ignore_eos_goes_on_where_the_model_would_stop_with_or_without_drafts(
    reference, speculating, messages, length
):
    """Under ``ignore_eos`` an answer is ``max_new_tokens`` long: the end-of-sequence
    token is never chosen, by a one-token step or by a verified draft, and the
    tokens before the point where the model would have stopped are its own."""
    stopped, *_ = answer(reference, messages, GenerationParams(max_new_tokens=length))
    assert len(stopped) < length
    params = GenerationParams(max_new_tokens=length, ignore_eos=True)
    ids, text, reason, _ = answer(speculating, messages, params)
    assert (ids, text, reason) == answer(reference, messages, params)[:3]
    assert len(ids) == length and reason == "length"
    assert speculating.tokenizer.eos_token_id not in ids
    assert ids[: len(stopped) - 1] == stopped[:-1]


def test_a_prediction_keeps_the_tokens_and_drafts_what_the_prompt_cannot(reference, speculating):
    """A haiku copies nothing from its prompt; predicted (OpenAI's Predicted Outputs), it
    decodes in a few forwards, and a wrong prediction changes no token either."""
    ids, text, reason, _ = answer(reference, NOT_COPYING[0])
    prompt = speculating.encode_chat(NOT_COPYING[0])
    # Wrong after its first word: drafted from there, and rejected.
    wrong = text.split()[0] + " roses are red, violets are blue, and so on and on."
    for prediction, right in ((text, True), (wrong, False)):
        handle = speculating.submit(prompt, GREEDY.model_copy(update={"prediction": prediction}))
        completion = handle.result()
        assert (handle.token_ids, completion.text, completion.finish_reason) == (ids, text, reason)
        metrics = completion.metrics
        predicted = len(speculating.tokenizer.encode(prediction, add_special_tokens=False))
        assert metrics.accepted_prediction_tokens + metrics.rejected_prediction_tokens == predicted
        if right:
            assert handle.forward_passes <= len(ids) // 3
            assert metrics.accepted_prediction_tokens >= len(ids) - 1
        else:  # only its first word was repeated
            first = len(speculating.tokenizer.encode(text.split()[0], add_special_tokens=False))
            assert metrics.accepted_prediction_tokens <= first < metrics.rejected_prediction_tokens
    plain = speculating.submit(prompt, GREEDY).result().metrics
    assert plain.accepted_prediction_tokens == plain.rejected_prediction_tokens == 0


def test_a_stop_string_in_a_predicted_answer_ends_it_and_its_count(reference, speculating):
    _, text, _, _ = answer(reference, NOT_COPYING[0])
    stop = text.split()[len(text.split()) // 2]
    params = GREEDY.model_copy(update={"stop": [stop]})
    expected = answer(reference, NOT_COPYING[0], params)
    handle = speculating.submit(
        speculating.encode_chat(NOT_COPYING[0]),
        params.model_copy(update={"prediction": text}),
    )
    completion = handle.result()
    assert (handle.token_ids, completion.text, completion.finish_reason) == expected[:3]
    assert completion.metrics.accepted_prediction_tokens <= completion.metrics.output_tokens


def test_a_prediction_with_half_a_surrogate_pair_is_read(speculating):
    """A prediction arrives as JSON too; half a surrogate pair in it made the
    tokenizer refuse it with its own TypeError and the request fail."""
    prompt = speculating.encode_chat(NOT_COPYING[0])
    params = GREEDY.model_copy(update={"prediction": "Roses \ud83d are red", "max_new_tokens": 4})
    completion = speculating.submit(prompt, params).result()
    assert completion.metrics.output_tokens == 4
