"""The head of a conversation as a longer one renders it (no model: a fake tokenizer)."""

from __future__ import annotations

from typing import Any

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
