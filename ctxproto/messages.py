"""Chat messages in the OpenAI chat-completions shape, tool calls included."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ctxproto.errors import ConfigError
from ctxproto.models.tokenizer_input import well_formed

__all__ = [
    "FunctionCall",
    "Message",
    "Role",
    "ToolCall",
    "known_fields",
    "non_text_part",
    "part_text",
    "template_message",
    "text_only",
    "well_formed",
]

Role = Literal["system", "developer", "user", "assistant", "tool"]


class FunctionCall(BaseModel):
    """A function an assistant asks to call; ``arguments`` is a JSON string, as OpenAI sends."""

    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    """One tool call inside an assistant message; its result comes back as a ``tool`` message."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message.

    ``pinned`` marks content that no stage and no budget may drop (the assembler
    always pins the system prompt and the current query as well).
    """

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    pinned: bool = Field(default=False, description="Never dropped by stages or the budget.")

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        """Accept OpenAI content-part lists by joining their texts (``part_text``):
        text parts, and an assistant's refusal, which is what it said."""
        if isinstance(value, list):
            return "\n".join(t for t in map(part_text, value) if t)
        return value

    @property
    def text(self) -> str:
        """The text a token counter sees: content plus any serialized tool calls."""
        text = self.content or ""
        if self.tool_calls:
            calls = json.dumps(
                [call.model_dump(exclude_none=True) for call in self.tool_calls],
                separators=(",", ":"),
            )
            text = f"{text}\n{calls}" if text else calls
        return text

    def to_openai(self) -> dict[str, Any]:
        """The wire form: OpenAI chat message fields only (no ``pinned``).

        ``content`` is left out only where OpenAI allows it, an assistant message
        that calls tools; elsewhere a message without text is sent with empty
        text, since a server refuses a user, system or tool message without it.
        """
        wire = self.model_dump(exclude_none=True, exclude={"pinned"})
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            wire["content"] = ""
        return wire


_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")
_CALL_FIELDS = ("id", "type", "function")


def known_fields(message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message dict with only the fields ``Message`` models, set ones only.

    What OpenAI returns carries more (an assistant message's ``refusal`` and
    ``annotations``, a streamed tool call's ``index``); clients send it back as
    history, and ``Message`` would refuse it. A ``refusal`` beside no content
    (``"content": null``, as OpenAI returns one) is what the assistant said, as a
    refusal part of a content list is (``part_text``), so it becomes the content:
    dropped, it left a turn with nothing said in the history.
    """
    plain = {k: message[k] for k in _FIELDS if message.get(k) is not None}
    refusal = message.get("refusal")
    said = message.get("role") == "assistant" and isinstance(refusal, str) and refusal
    if said and _holds_nothing(plain.get("content")):
        plain["content"] = refusal
    if plain.get("tool_calls"):
        plain["tool_calls"] = [
            {k: call[k] for k in _CALL_FIELDS if k in call} for call in plain["tool_calls"]
        ]
    return plain


_TEXT_PARTS = ("text", "refusal")


def part_text(part: Any) -> str | None:
    """The text of one OpenAI content part, or ``None`` for a part that carries media.

    In the chat-completions schema a part holds text when its type is ``text``, or
    ``refusal`` (what an assistant said instead of answering); ``image_url``,
    ``input_audio`` and ``file`` carry media, as do the types other servers add
    (vLLM's ``video_url``, ``image_embeds``...): any type but those two is media.
    A bare string is its own text; a non-part (a number) holds none.
    """
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return ""
    kind = _part_type(part)
    if kind not in _TEXT_PARTS:
        return None
    value = part.get(kind)
    return "" if value is None else str(value)


def _part_type(part: dict[str, Any]) -> str:
    """A part's ``type``; for a part without one, the key that holds its payload.

    A part without a type was read as text, and still is unless it holds media;
    vLLM also takes a media part by its key alone (``{"image_url": "https://..."}``),
    and reads a part holding both text and an image as the image, so such a part
    is named by its media key (never the question with its image dropped). Other
    keys (``cache_control``, an image set to ``None``) carry nothing to drop.
    """
    if part.get("type") is not None:
        return str(part["type"])
    media = next((k for k in _MEDIA_KEYS if part.get(k) is not None), None)
    return media or next((k for k in _TEXT_PARTS if k in part), "text")


_MEDIA_KEYS = ("image_url", "image_embeds", "input_audio", "audio_url", "video_url", "file")
"""The keys that carry media in a part without a type (OpenAI's part types, and the
ones vLLM adds)."""


def _holds_nothing(content: Any) -> bool:
    """Whether a message's content says nothing: absent, empty, or parts of empty text."""
    if isinstance(content, list):
        return all(part_text(part) == "" for part in content)
    return not content


def non_text_part(messages: list[dict[str, Any]]) -> tuple[int, str] | None:
    """The index and type of the first content part that carries media (an image,
    audio, a file: ``part_text``), or ``None``: ``Message`` keeps text only."""
    for index, message in enumerate(messages):
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part_text(part) is None:
                return index, _part_type(part)
    return None


def text_only(data: Any) -> Any:
    """``data``, a mapping about to be validated, as it is; a ``ConfigError`` naming the
    first of its ``messages`` with an image, audio or file part.

    ``Message`` keeps only the text parts, so a request holding an image ran, and
    its prompt reached the model without the image, with nothing said. The proxy
    passes such a conversation on unprocessed and the MCP tools refuse it; the
    readers of requests and evaluation items refuse it through here.
    """
    messages = data.get("messages") if isinstance(data, dict) else None
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        found = non_text_part([message]) if isinstance(message, dict) else None
        if found is not None:
            raise ConfigError(
                f"holds a part of type '{found[1]}', which the stages (they read text) would drop",
                key=f"messages[{index}].content",
                expected="text parts only; send this conversation to the model as it is",
            )
    return data


def template_message(message: Message, *, calls_rendered: bool) -> dict[str, Any]:
    """``message`` as the chat template reads it: always with text content.

    An assistant message that only calls tools has no content on the wire, and
    templates that read ``message['content']`` (SmolLM2's) fail on it. A template
    that never mentions ``tool_calls`` would also drop the calls, so the model
    would not see what it asked for before the tool's answer; it gets the calls
    serialized after the text instead, as the transcript without a template does
    and as the token counters count the message. The runtime renders its prompts
    and the counters their budgets through this one form, so both count alike.
    """
    wire = message.to_openai()
    wire["content"] = (message.content or "") if calls_rendered else message.text
    return wire
