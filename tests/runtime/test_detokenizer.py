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
