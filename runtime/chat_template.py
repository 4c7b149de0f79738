"""Rendering chat messages into the prompt token ids the model was trained on.

Messages are validated as ctxproto ``Message`` objects first (OpenAI roles, tool
calls), so a malformed message fails with a ``ConfigError`` naming the problem
before any model work. The model's own chat template renders them; a tokenizer
without one gets a plain ``role: content`` transcript. A template that cannot
render a message (jinja's errors, a template's ``raise_exception``) is a
``ConfigError`` on the messages too, not the template engine's own exception; a
template that does not parse is a ``BackendError``: no messages would render.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ctxproto.errors import BackendError, ConfigError
from ctxproto.messages import Message, template_message, well_formed

__all__ = ["render_chat", "render_head"]


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], *, reply: bool = True) -> list[int]:
    """Token ids of ``messages``, then (with ``reply``) the opening of the assistant's reply."""
    if not isinstance(messages, list) or not messages:
        raise ConfigError("a request needs at least one message", key="messages")
    try:
        validated = [Message.model_validate(m) for m in messages]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"invalid message: {first['msg']}", key="messages") from None
    template = getattr(tokenizer, "chat_template", None)
    if template:
        # transformers' template engine: loaded by now
        from jinja2.exceptions import TemplateError, TemplateSyntaxError

        calls_rendered = "tool_calls" in str(template)
        wire = [template_message(m, calls_rendered=calls_rendered) for m in validated]
        try:
            text = tokenizer.apply_chat_template(wire, add_generation_prompt=reply, tokenize=False)
        except TemplateSyntaxError as exc:  # the model's fault, whatever the messages
            raise BackendError(
                f"the model's chat template does not parse (line {exc.lineno}: {exc.message}):"
                " no chat can be rendered for it"
            ) from exc
        except TemplateError as exc:
            raise ConfigError(
                f"the model's chat template cannot render these messages: {exc}", key="messages"
            ) from exc
    else:
        lines = [f"{m.role}: {m.text}" for m in validated]
        text = "\n".join([*lines, "assistant: "] if reply else lines)
    # JSON can carry half a surrogate pair, which Rust tokenizers refuse whole.
    ids: list[int] = tokenizer(well_formed(text), add_special_tokens=False)["input_ids"]
    return ids


def render_head(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int] | None:
    """Token ids of ``messages`` as a longer conversation renders them; ``None`` when the
    template refuses them.

    They are rendered before an empty user message, not as the end of the
    conversation: templates render the last message differently (Qwen3 gives a
    final assistant message an empty think block) and some refuse a conversation
    with no user message. A caller takes the common prefix with the whole prompt,
    so a template that still renders the head otherwise only makes it shorter.
    """
    conversation = [*messages, {"role": "user", "content": ""}]
    try:
        return render_chat(tokenizer, conversation, reply=False)
    except Exception:  # a template's own refusal (roles that must alternate, say)
        return None
