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
