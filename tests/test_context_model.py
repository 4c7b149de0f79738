import json
from pathlib import Path

import pytest

from ctxproto import ChatRequest, Context, Document, Message
from ctxproto.errors import ConfigError

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
