"""Rendering chat messages: the head of a conversation as a longer one renders it, tool
calls and template errors (a fake tokenizer, and the bundled model's for its template)."""

from __future__ import annotations

from typing import Any

import pytest

from ctxproto.errors import BackendError, ConfigError
from ctxproto.runtime.chat_template import render_chat, render_head
from ctxproto.runtime.radix_cache import common_prefix_length

SYSTEM = {"role": "system", "content": "Be brief."}
QUESTION = {"role": "user", "content": "Docs: the R7 has four ports.\nHow many ports?"}


class CharTokenizer:
    """One token per character; a ChatML-like template that, as some do, refuses a
    conversation without a user message and marks its last assistant message."""

    chat_template: str | None = "chatml-like"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool, tokenize: bool
    ) -> str:
        if not any(m["role"] == "user" for m in messages):
            raise ValueError("No user query found in messages.")
        last = len(messages) - 1
        parts = [
            f"<{m['role']}>{'<final>' if i == last and m['role'] == 'assistant' else ''}"
            f"{m['content']}</{m['role']}>"
            for i, m in enumerate(messages)
        ]
        return "".join(parts) + ("<assistant>" if add_generation_prompt else "")


def test_the_head_is_rendered_as_inside_the_whole_conversation():
    tokenizer = CharTokenizer()
    history = [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    prompt = render_chat(tokenizer, [*history, QUESTION])
    head = render_head(tokenizer, history)
    assert head is not None
    whole = render_chat(tokenizer, history, reply=False)
    # Rendered alone, the last answer is marked and shares less with the prompt.
    assert common_prefix_length(whole, prompt) < len(whole)
    expected = len(render_chat(tokenizer, [*history, {"role": "user", "content": ""}])) - len(
        "</user><assistant>"
    )
    assert common_prefix_length(head, prompt) == expected


def test_a_head_the_template_refuses_is_none():
    assert render_head(CharTokenizer(), [{"role": "user", "content": "x"}]) is not None
    # A system message alone has no user query: a user message is added, so it renders.
    assert render_head(CharTokenizer(), [SYSTEM]) is not None

    class Strict(CharTokenizer):
        def apply_chat_template(
            self, messages: Any, add_generation_prompt: bool, tokenize: bool
        ) -> str:
            if messages[-1]["content"] == "":
                raise ValueError("Conversation roles must alternate")
            return super().apply_chat_template(messages, add_generation_prompt, tokenize)

    assert render_head(Strict(), [SYSTEM]) is None


def test_without_a_template_the_head_is_a_prefix():
    class Plain(CharTokenizer):
        chat_template = None

    prompt = render_chat(Plain(), [SYSTEM, QUESTION])
    head = render_head(Plain(), [SYSTEM])
    assert head is not None
    assert common_prefix_length(head, prompt) == len("system: Be brief.\nuser: ")


TOOL_TURN: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the R7's firmware version?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call-1",
                "type": "function",
                "function": {"name": "firmware_version", "arguments": '{"model": "R7"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call-1", "content": "4.2.1"},
]


def test_a_tool_call_without_text_renders_with_the_bundled_template(lm_tokenizer):
    """SmolLM2's template reads every message's content: an assistant message that only
    calls a tool failed with jinja's UndefinedError, and the template would drop the call."""
    prompt = lm_tokenizer.decode(render_chat(lm_tokenizer, TOOL_TURN))
    assert '"name":"firmware_version"' in prompt
    assert prompt.index("firmware_version") < prompt.index("4.2.1")


def test_a_template_that_renders_tool_calls_gets_them_as_they_are():
    class ToolAware(CharTokenizer):
        chat_template = "... message.tool_calls ..."

        def apply_chat_template(
            self, messages: Any, add_generation_prompt: bool, tokenize: bool
        ) -> str:
            assert messages[1]["content"] == ""
            assert messages[1]["tool_calls"][0]["function"]["name"] == "firmware_version"
            return super().apply_chat_template(messages, add_generation_prompt, tokenize)

    assert render_chat(ToolAware(), TOOL_TURN)


def test_a_template_error_is_a_config_error_on_the_messages():
    from jinja2.exceptions import TemplateError

    class Refusing(CharTokenizer):
        def apply_chat_template(
            self, messages: Any, add_generation_prompt: bool, tokenize: bool
        ) -> str:
            raise TemplateError("Conversation roles must alternate user/assistant")

    with pytest.raises(ConfigError, match="roles must alternate") as caught:
        render_chat(Refusing(), [SYSTEM, QUESTION])
    assert caught.value.key == "messages"


def test_half_a_surrogate_pair_renders_as_the_replacement_character(lm_tokenizer):
    """JSON may escape half a pair ("\\ud83d"); the Rust tokenizer refused the whole
    prompt with its own TypeError, where the counters read the half as U+FFFD."""
    message = {"role": "user", "content": "hi \ud83d there"}
    prompt = lm_tokenizer.decode(render_chat(lm_tokenizer, [message]))
    assert "hi \ufffd there" in prompt


def test_a_template_that_does_not_parse_is_the_models_failure_not_the_messages():
    from jinja2.exceptions import TemplateSyntaxError

    class Broken(CharTokenizer):
        def apply_chat_template(
            self, messages: Any, add_generation_prompt: bool, tokenize: bool
        ) -> str:
            raise TemplateSyntaxError("unexpected '}'", lineno=3)

    with pytest.raises(BackendError, match=r"does not parse \(line 3") as caught:
        render_chat(Broken(), [SYSTEM, QUESTION])
    assert not isinstance(caught.value, ConfigError)
