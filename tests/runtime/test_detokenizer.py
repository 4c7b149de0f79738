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
