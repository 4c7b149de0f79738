"""``ScriptedBackend``: scripted answers through the real backend interface."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ctxproto import BackendError
from ctxproto.runtime import Backend, GenerationParams, ScriptedBackend

CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What colour is the sky?"},
]


def test_replies_come_in_order_and_requests_are_recorded() -> None:
    backend = ScriptedBackend(["Blue.", "Grey, today."])
    params = GenerationParams(max_new_tokens=8)
    first = backend.generate(CHAT, params)
    second = backend.generate([*CHAT, {"role": "user", "content": "Sure?"}])
    assert (first.text, second.text) == ("Blue.", "Grey, today.")
    assert (first.finish_reason, second.finish_reason) == ("stop", "stop")
    assert backend.calls == 2
    assert backend.requests[0].messages == CHAT
    assert backend.requests[0].params == params
    assert backend.requests[1].params == GenerationParams()
    assert first.metrics.output_tokens == 1 and second.metrics.output_tokens == 2


def test_running_out_of_replies_is_a_backend_error() -> None:
    backend = ScriptedBackend(["only one"])
    backend.generate(CHAT)
    with pytest.raises(BackendError, match="no reply left for request 2"):
        backend.generate(CHAT)


def test_a_function_answers_from_the_messages() -> None:
    def echo(messages: list[dict[str, Any]]) -> str:
        return f"You said: {messages[-1]['content']}"

    backend = ScriptedBackend(echo)
    assert backend.generate(CHAT).text == "You said: What colour is the sky?"
    assert backend.generate(CHAT).text == "You said: What colour is the sky?"
    assert backend.calls == 2


def test_messages_are_recorded_as_sent_not_as_mutated_later() -> None:
    backend = ScriptedBackend(["ok"])
    messages = [dict(m) for m in CHAT]
    backend.generate(messages)
    messages[-1]["content"] = "changed"
    assert backend.requests[0].messages == CHAT


def test_max_new_tokens_cuts_on_a_word_and_says_length() -> None:
    backend = ScriptedBackend(["one two three four five"])
    completion = backend.generate(CHAT, GenerationParams(max_new_tokens=3))
    assert completion.text == "one two three"
    assert completion.finish_reason == "length"
    assert completion.metrics.output_tokens == 3


def test_stop_strings_end_the_text_before_them() -> None:
    backend = ScriptedBackend(["Answer: 42\nUser: and then?", "no stop here"])
    params = GenerationParams(stop=["\nUser:", "zzz"])
    assert backend.generate(CHAT, params).text == "Answer: 42"
    untouched = backend.generate(CHAT, params)
    assert (untouched.text, untouched.finish_reason) == ("no stop here", "stop")


def test_stream_yields_words_then_the_same_completion() -> None:
    backend = ScriptedBackend(["Blue, mostly.", "Blue, mostly."])
    blocking = backend.generate(CHAT)
    stream = backend.stream(CHAT)
    deltas = list(stream)
    assert deltas == ["Blue, ", "mostly."]
    assert stream.completion is not None
    assert stream.completion.text == blocking.text
    assert stream.completion.metrics.output_tokens == 2
    assert 0 <= stream.completion.metrics.ttft_ms <= stream.completion.metrics.latency_ms


def test_closing_a_stream_early_counts_as_cancelled() -> None:
    backend = ScriptedBackend(["one two three"])
    stream = backend.stream(CHAT)
    assert next(stream) == "one "
    stream.close()
    assert backend.cancelled == 1
    assert stream.completion is None


def test_cached_tokens_are_the_prefix_shared_with_an_earlier_prompt() -> None:
    backend = ScriptedBackend(["a", "b", "c"])
    first = backend.generate(CHAT)
    longer = backend.generate([*CHAT, {"role": "assistant", "content": "a"}])
    same = backend.generate(CHAT)
    assert first.metrics.cached_tokens == 0
    assert longer.metrics.cached_tokens == first.metrics.prompt_tokens
    assert longer.metrics.prompt_tokens > first.metrics.prompt_tokens
    # As in an engine, a repeated prompt still computes its last token.
    assert same.metrics.cached_tokens == same.metrics.prompt_tokens - 1


def test_it_is_a_backend_with_async_and_context_manager() -> None:
    with ScriptedBackend(["async answer"]) as backend:
        typed: Backend = backend
        completion = asyncio.run(typed.agenerate(CHAT))
    assert completion.text == "async answer"
