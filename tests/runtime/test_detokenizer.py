from typing import Any

from ctxproto.runtime.detokenizer import IncrementalDetokenizer


def feed(tokenizer: Any, text: str, stop: list[str]) -> tuple[IncrementalDetokenizer, list[str]]:
    stream = IncrementalDetokenizer(tokenizer, stop)
    deltas = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    deltas.append(stream.flush())
    return stream, deltas


def test_deltas_join_to_the_text(lm_tokenizer):
    stream, deltas = feed(lm_tokenizer, "Hello there, café ünïcode 🙂 done.", [])
    assert "".join(deltas) == stream.text == "Hello there, café ünïcode 🙂 done."
    assert not any("\ufffd" in d for d in deltas)


def test_stop_string_cuts_the_text_and_is_never_streamed(lm_tokenizer):
    stream, deltas = feed(lm_tokenizer, "Step one. END OF ANSWER and more", ["END OF"])
    assert stream.stopped
    assert stream.text == "Step one. "
    assert "".join(deltas) == "Step one. "


def test_text_that_only_starts_like_a_stop_string_is_released(lm_tokenizer):
    stream, deltas = feed(lm_tokenizer, "an ENDless road", ["END OF"])
    assert not stream.stopped
    assert "".join(deltas) == "an ENDless road"


def test_a_character_the_answer_ends_inside_is_dropped_not_half_shown(lm_tokenizer):
    # " 🎉" is three tokens; an answer cut after the first two (the token limit, an end
    # of turn) holds two of the emoji's four bytes, which decode as U+FFFD.
    ids = lm_tokenizer("Ok 🎉", add_special_tokens=False)["input_ids"]
    stream = IncrementalDetokenizer(lm_tokenizer, [])
    deltas = [stream.push(token) for token in ids[:-1]]
    deltas.append(stream.flush())
    assert stream.text == "Ok "
    assert "".join(deltas) == "Ok "


def test_a_replacement_character_the_model_wrote_is_kept_at_the_end(lm_tokenizer):
    # U+FFFD as a character of its own (bytes EF BF BD, complete) ends the answer: it is
    # the model's text, not a character the token limit cut, and was dropped as one.
    text = "The file has a bad byte, shown as \ufffd"
    stream, deltas = feed(lm_tokenizer, text, [])
    assert stream.text == "".join(deltas) == text
    # One the model wrote just before a character it only began: that one is dropped.
    ids = lm_tokenizer("shown as \ufffd🎉", add_special_tokens=False)["input_ids"]
    stream = IncrementalDetokenizer(lm_tokenizer, [])
    deltas = [stream.push(token) for token in ids[:-1]]
    deltas.append(stream.flush())
    assert stream.text == "".join(deltas) == "shown as \ufffd"


def test_an_added_special_token_inside_a_character_does_not_release_it_half_done(lm_tokenizer):
    """decode(skip_special_tokens=True) skips the added special tokens too (SmolLM2's
    <file_sep> and the like): read as text, one between an emoji's bytes hid the
    unfinished character, and its replacement character was streamed."""
    added = [
        i
        for i, token in lm_tokenizer.added_tokens_decoder.items()
        if token.special and i not in lm_tokenizer.all_special_ids
    ]
    assert added
    emoji = lm_tokenizer("🎉", add_special_tokens=False)["input_ids"]
    assert len(emoji) > 1
    ids = lm_tokenizer("Party ", add_special_tokens=False)["input_ids"]
    ids += [*emoji[:-1], added[0], *emoji[-1:]]
    detokenizer = IncrementalDetokenizer(lm_tokenizer, [])
    streamed = "".join(detokenizer.push(i) for i in ids) + detokenizer.flush()
    assert streamed == detokenizer.text == lm_tokenizer.decode(ids, skip_special_tokens=True)
    assert "\ufffd" not in streamed
