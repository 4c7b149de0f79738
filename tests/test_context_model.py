import json
from pathlib import Path
from typing import Any

import pytest

from ctxproto import ChatRequest, Context, Document, Message
from ctxproto.errors import ConfigError
from ctxproto.messages import FunctionCall, ToolCall, non_text_part

EXAMPLE = Path(__file__).parents[1] / "examples" / "requests" / "support_chat.json"


def tool_exchange() -> list[dict[str, object]]:
    return [
        {"role": "user", "content": "What's the weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 4}'},
        {"role": "assistant", "content": "It is 4 °C in Oslo."},
    ]


def test_request_splits_system_history_and_query():
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                *tool_exchange(),
                {"role": "user", "content": "And tomorrow?"},
            ],
            "documents": [{"id": "d1", "text": "Oslo forecast"}],
            "model": "ignored-by-stages",
        }
    )
    context = request.to_context()
    assert context.system_prompt == "Be brief."
    assert context.query is not None and context.query.content == "And tomorrow?"
    assert [m.role for m in context.history] == ["user", "assistant", "tool", "assistant"]
    assert context.documents[0].id == "d1"


def test_context_round_trips_through_json():
    request = ChatRequest.model_validate(
        {"messages": [*tool_exchange(), {"role": "user", "content": "x"}]}
    )
    context = request.to_context().model_copy(
        update={"summary": "earlier: Oslo", "documents": [Document(id="a", text="t", score=0.5)]}
    )
    again = Context.model_validate_json(context.model_dump_json())
    assert again == context
    assert again.history[1].tool_calls is not None
    assert again.history[1].tool_calls[0].function.name == "weather"


def test_content_parts_are_joined_and_tool_calls_counted_as_text():
    message = Message.model_validate(
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    )
    assert message.content == "a\nb"
    call = Message.model_validate(tool_exchange()[1])
    assert '"name":"weather"' in call.text
    assert "pinned" not in call.to_openai()


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def test_a_request_with_an_image_part_is_refused_naming_the_message(tmp_path):
    """The image was dropped with the other non-text parts, and the lean prompt
    reached the model without it, with nothing said."""
    pictured = {"role": "user", "content": [{"type": "text", "text": "What is it?"}, IMAGE]}
    path = tmp_path / "pictured.json"
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "Hi."}, pictured]}))
    with pytest.raises(ConfigError) as info:
        ChatRequest.from_json_file(str(path))
    assert str(info.value) == (
        f"{path}: key 'messages[1].content': holds a part of type 'image_url', which the "
        "stages (they read text) would drop (expected text parts only; send this "
        "conversation to the model as it is)"
    )


def test_a_refusal_part_and_a_part_without_a_type_are_text_and_media_is_refused():
    """Every part whose type was not "text" was refused as if it were an image,
    an assistant's refusal among them (which ``Message`` had dropped before)."""
    refused = {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}
    untyped = {"role": "user", "content": [{"text": "Why not?"}]}
    request = ChatRequest.from_openai([refused, untyped])
    assert [m.content for m in request.messages] == ["I can't.", "Why not?"]
    for media in (
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
        {"type": "image_embeds", "image_embeds": "AAAA"},  # a string, yet no text
        {"image_url": "https://example.com/cat.png"},  # vLLM's part without a type
    ):
        kind = media.get("type") or "image_url"
        with pytest.raises(ConfigError, match=f"holds a part of type '{kind}'"):
            ChatRequest.from_openai([{"role": "user", "content": [media]}])


def test_a_part_without_a_type_holding_text_and_an_image_is_media_not_its_text():
    """vLLM reads an untyped part by its payload, an image before text; read as its
    text, the question went on to the model with its picture dropped, unsaid."""
    both = {"text": "What is in this picture?", "image_url": "https://example.com/cat.png"}
    message = {"role": "user", "content": [both]}
    assert non_text_part([message]) == (0, "image_url")
    with pytest.raises(ConfigError, match="holds a part of type 'image_url'"):
        ChatRequest.from_openai([message])
    reworded = {"role": "user", "content": [{"refusal": "No."}, {"text": "Why?"}, {}]}
    assert non_text_part([reworded]) is None


@pytest.mark.parametrize(
    "part",
    [
        {"type": None, "text": "hi"},
        {"text": "hi", "cache_control": {"type": "ephemeral"}},
        {"text": "hi", "image_url": None},  # vLLM reads no image from None
    ],
)
def test_a_part_without_a_type_and_no_media_is_its_text(part):
    """Any key besides text and refusal made an untyped part media: a 400 from the
    bundled runtime, a refusal from the SDK naming a type ('type', 'cache_control')."""
    request = ChatRequest.from_openai([{"role": "user", "content": [part]}])
    assert [m.content for m in request.messages] == ["hi"]


def test_a_refusal_is_an_assistants_text_only_when_it_said_nothing_else():
    """A ``refusal`` key on a user or tool message became that message's text, and an
    assistant's refusal beside empty text parts was dropped."""
    question = {"role": "user", "content": "Why not?"}
    empty_parts = {"role": "assistant", "content": [{"type": "text", "text": ""}], "refusal": "No."}
    foreign = {"role": "user", "content": "", "refusal": "leak"}
    request = ChatRequest.from_openai([question, empty_parts, foreign, question])
    assert [m.content for m in request.messages] == ["Why not?", "No.", "", "Why not?"]


def test_an_assistant_refusal_beside_no_content_is_kept_as_its_text():
    """OpenAI returns a refusal as ``"content": null, "refusal": "..."``; the field was
    dropped with the others ``Message`` does not model, leaving a turn with no text."""
    refused = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    answered: dict[str, object] = {
        "role": "assistant",
        "content": "Hello!",
        "refusal": None,
        "annotations": [],
    }
    question = {"role": "user", "content": "Why not?"}
    request = ChatRequest.from_openai([refused, answered, question])
    assert [m.content for m in request.messages] == [
        "I can't help with that.",
        "Hello!",
        "Why not?",
    ]
    part = {"type": "refusal", "refusal": "I can't help with that."}  # the same, as a part
    as_part = ChatRequest.from_openai([{"role": "assistant", "content": [part]}, question])
    assert as_part.messages == request.messages[:1] + request.messages[2:]


def test_unknown_message_field_and_role_are_rejected():
    with pytest.raises(ValueError):
        Message.model_validate({"role": "user", "content": "x", "colour": "red"})
    with pytest.raises(ValueError):
        Message.model_validate({"role": "robot", "content": "x"})


def test_example_request_is_a_long_support_chat():
    request = ChatRequest.from_json_file(str(EXAMPLE))
    assert len(request.messages) > 20
    assert request.to_context().query is not None


def test_bad_request_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "contnet": "hi"}]}))
    with pytest.raises(ConfigError) as info:
        ChatRequest.from_json_file(str(path))
    assert str(path) in str(info.value)
    assert "messages[0].contnet" in str(info.value)


def test_a_request_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}')
    with pytest.raises(ConfigError) as info:
        ChatRequest.from_json_file(str(path))
    assert str(path) in str(info.value) and "not UTF-8" in str(info.value)


def test_an_oversized_or_endless_request_is_refused(tmp_path):
    from ctxproto.limits import MAX_REQUEST_BYTES

    path = tmp_path / "huge.json"
    filler = "x" * MAX_REQUEST_BYTES
    path.write_text(json.dumps({"messages": [{"role": "user", "content": filler}]}))
    with pytest.raises(ConfigError, match="larger than the 16 MiB limit"):
        ChatRequest.from_json_file(str(path))
    with pytest.raises(ConfigError, match="larger than the 16 MiB limit"):
        ChatRequest.from_json_file("/dev/zero")


def test_an_error_in_a_large_request_quotes_only_an_excerpt(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"messages": [{"role": "r" * 5_000_000, "content": "hi"}]}))
    with pytest.raises(ConfigError) as info:
        ChatRequest.from_json_file(str(path))
    assert "messages[0].role" in str(info.value)
    assert "(5000000 chars)" in str(info.value)
    assert len(str(info.value)) < 300
    path.write_text('{"messages": ' + "x" * 5_000_000)
    with pytest.raises(ConfigError) as info:
        ChatRequest.from_json_file(str(path))
    assert "Invalid JSON" in str(info.value)
    assert len(str(info.value)) < 300


def _call(call_id: str, name: str = "weather") -> dict[str, object]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def test_an_orphan_tool_result_is_dropped_and_reported():
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "call_9", "content": "stray"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"},
            ]
        }
    )
    context = request.to_context()
    assert [m.role for m in context.history] == ["user", "assistant"]
    assert context.repairs == ["dropped 1 tool result that answered no call"]


def test_a_tool_call_without_result_in_history_is_dropped_keeping_the_text():
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": "Weather in Oslo and Bergen?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [_call("call_1"), _call("call_2")],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "4 C"},
                {"role": "assistant", "tool_calls": [_call("call_3")]},
                {"role": "user", "content": "Never mind."},
            ]
        }
    )
    context = request.to_context()
    assistant = context.history[1]
    assert assistant.content == "Checking."
    assert [c.id for c in assistant.tool_calls or []] == ["call_1"]
    assert [m.role for m in context.history] == ["user", "assistant", "tool"]
    assert context.repairs == ["dropped 2 tool calls that had no result"]


def test_a_request_ending_in_unanswered_tool_calls_is_refused(tmp_path):
    path = tmp_path / "dangling.json"
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [_call("call_1"), _call("call_2")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 C"},
    ]
    path.write_text(json.dumps({"messages": messages}))
    with pytest.raises(ConfigError) as info:
        ChatRequest.from_json_file(str(path))
    assert "messages[1]" in str(info.value) and "call_2" in str(info.value)
    assert str(path) in str(info.value)


def test_a_mid_history_system_message_stays_in_place_and_is_reported():
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "Answer in French from now on."},
                {"role": "assistant", "content": "Bonjour."},
                {"role": "user", "content": "bye"},
            ]
        }
    )
    context = request.to_context()
    assert context.system_prompt == "Be brief."
    assert [m.role for m in context.history] == ["user", "system", "assistant"]
    assert context.repairs == ["left 1 system message in mid-history in place"]


def test_a_well_formed_tool_exchange_needs_no_repair():
    context = ChatRequest.model_validate({"messages": tool_exchange()}).to_context()
    assert context.repairs == []
    assert [m.role for m in context.history] == ["user", "assistant", "tool", "assistant"]


def test_a_message_without_text_goes_on_the_wire_with_empty_text_where_openai_needs_it():
    call = ToolCall(id="c1", function=FunctionCall(name="f", arguments="{}"))
    assert Message(role="user").to_openai() == {"role": "user", "content": ""}
    assert Message(role="tool", tool_call_id="c1").to_openai()["content"] == ""
    assert Message(role="assistant").to_openai()["content"] == ""
    assert "content" not in Message(role="assistant", tool_calls=[call]).to_openai()


@pytest.mark.parametrize(
    ("messages", "key"),
    [("What is 2+2?", "messages"), (["What is 2+2?"], "messages[0]"), ([None], "messages[0]")],
)
def test_messages_that_are_not_message_dicts_are_a_config_error(messages, key):
    """A string, or a list of anything but dicts, raised a bare ``AttributeError``."""
    with pytest.raises(ConfigError) as info:
        ChatRequest.from_openai(messages)
    assert info.value.key == key


def test_a_tuple_or_generator_of_openai_messages_is_trimmed_as_a_list_is():
    """Only a list was trimmed to the known fields once strings were refused: a tuple
    of messages as the openai client returns them (``annotations``) was refused."""
    said: dict[str, Any] = {"role": "assistant", "content": "Hi.", "annotations": []}
    said["refusal"] = None
    asked = {"role": "user", "content": "Hello"}
    for messages in ((asked, said), (m for m in [asked, said])):
        request = ChatRequest.from_openai(messages)
        assert [m.content for m in request.messages] == ["Hello", "Hi."]
