# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""Wire compatibility, through the real ``openai`` client, against the scripted upstream."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.serve.clients import openai_client
from tests.serve.scripted_upstream import REFUSAL

pytestmark = pytest.mark.models  # the semantic cache's embedder

USER = [{"role": "user", "content": "Where is my parcel number 4711?"}]


def client(proxy, key: str = "key-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url, api_key=key, max_retries=0)


def test_sync_chat_is_a_complete_chat_completion(proxy, scripted):
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=USER, extra_headers={"x-ctxproto-cache": "bypass"}
    )
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.model == "ctxproto"
    assert answer.choices[0].message.content == f"{USER[0]['content']} | {USER[0]['content']}"
    assert answer.usage.prompt_tokens_details.cached_tokens == 2
    assert raw.headers["x-ctxproto-cache"] == "bypass"
    assert int(raw.headers["x-ctxproto-original-tokens"]) > 0
    assert raw.headers["x-ctxproto-session"].startswith("conv-")
    assert scripted.bodies[-1]["model"] == "scripted"
    assert scripted.bodies[-1]["cache_salt"] == "ctxproto-tenant-tenant-a"


def test_async_chat(proxy):
    async def ask() -> str:
        async with openai.AsyncOpenAI(base_url=proxy.url, api_key="key-a") as aclient:
            answer = await aclient.chat.completions.create(
                model="ctxproto", messages=[{"role": "user", "content": "async hello"}]
            )
            return answer.choices[0].message.content or ""

    assert asyncio.run(ask()) == "async hello | async hello"


def test_stream_with_usage_is_an_openai_stream(proxy):
    stream = client(proxy).chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": "stream these words"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-ctxproto-cache": "bypass"},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "stream these words | stream these words"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7 + len(text.split())


def test_stream_without_include_usage_has_no_usage_chunk(proxy):
    stream = client(proxy).chat.completions.create(
        model="ctxproto", messages=[{"role": "user", "content": "no usage"}], stream=True
    )
    chunks = list(stream)
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_tool_call_round_trip(proxy, scripted):
    tools = [{"type": "function", "function": {"name": "track", "parameters": {"type": "object"}}}]
    messages: list[Any] = [{"role": "user", "content": "track 4711"}]
    first = client(proxy).chat.completions.create(
        model="ctxproto", messages=messages, tools=tools, tool_choice="auto", temperature=0.2
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"q": "track 4711"}
    assert scripted.bodies[-1]["tools"] == tools and scripted.bodies[-1]["tool_choice"] == "auto"
    assert scripted.bodies[-1]["temperature"] == 0.2
    messages += [
        first.choices[0].message,
        {"role": "tool", "tool_call_id": call.id, "content": "in Berlin"},
    ]
    second = client(proxy).chat.completions.create(model="ctxproto", messages=messages, tools=tools)
    assert second.choices[0].message.content == "tool said: in Berlin"
    forwarded = scripted.bodies[-1]["messages"]
    assistant = next(i for i, m in enumerate(forwarded) if m.get("tool_calls"))
    assert forwarded[assistant + 1]["role"] == "tool"  # never separated from its result


def test_streamed_tool_call_is_merged(proxy):
    tools = [{"type": "function", "function": {"name": "track", "parameters": {"type": "object"}}}]
    stream = client(proxy).chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": "where 9"}],
        tools=tools,
        stream=True,
    )
    chunks = list(stream)
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(arguments) == {"q": "where 9"}


def test_unknown_fields_are_forwarded_untouched(proxy, scripted):
    client(proxy).chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": "x1"}],
        extra_body={"top_k": 5, "chat_template_kwargs": {"a": 1}},
        seed=3,
        stop=["END"],
    )
    body = scripted.bodies[-1]
    assert body["top_k"] == 5 and body["chat_template_kwargs"] == {"a": 1}
    assert body["seed"] == 3 and body["stop"] == ["END"]


def test_cache_hit_is_replayed_as_a_stream(proxy, scripted):
    question = [{"role": "user", "content": "What is the warranty period of the R7 router?"}]
    first = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=question
    )
    assert first.headers["x-ctxproto-cache"] == "miss"
    posts = len(scripted.bodies)
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=question, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-ctxproto-cache"] == "hit"
    chunks = list(raw.parse())
    assert len(scripted.bodies) == posts  # answered without the upstream
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.parse().choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == 0
    bypass = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=question, extra_headers={"cache-control": "no-cache"}
    )
    assert bypass.headers["x-ctxproto-cache"] == "bypass" and len(scripted.bodies) == posts + 1


def test_an_answer_padded_past_its_end_is_neither_served_from_nor_filed_in_the_cache(
    proxy, scripted
):
    question = [{"role": "user", "content": "How long does the K2 kettle take to boil?"}]
    padded = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=question, extra_body={"ignore_eos": True}
    )
    assert padded.headers["x-ctxproto-cache"] == "bypass"
    assert scripted.bodies[-1]["ignore_eos"] is True
    first = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=question
    )
    assert first.headers["x-ctxproto-cache"] == "miss"  # the padded answer was not filed
    again = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=question, extra_body={"ignore_eos": True}
    )
    assert again.headers["x-ctxproto-cache"] == "bypass"  # nor is the cached one served


def test_an_answer_cut_at_max_tokens_is_served_only_under_that_cap(proxy, scripted):
    question = [{"role": "user", "content": "Which fuse does the T9 heater take?"}]

    def ask(**cap: int) -> Any:
        return client(proxy).chat.completions.with_raw_response.create(
            model="ctxproto", messages=question, **cap
        )

    cut = ask(max_tokens=2)
    assert cut.parse().choices[0].finish_reason == "length"
    whole = ask()
    assert whole.headers["x-ctxproto-cache"] == "miss"  # the cut answer is not served whole
    assert ask(max_tokens=3).headers["x-ctxproto-cache"] == "miss"
    same_cap = ask(max_tokens=2)
    assert same_cap.headers["x-ctxproto-cache"] == "hit"
    assert same_cap.parse().choices[0].message.content == cut.parse().choices[0].message.content
    again = ask()
    assert again.headers["x-ctxproto-cache"] == "hit"
    assert again.parse().choices[0].message.content == whole.parse().choices[0].message.content


def test_an_answer_is_reused_only_under_the_same_system_prompt(proxy):
    def ask(system: str):
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": "How do I descale the K4 kettle?"},
        ]
        return client(proxy).chat.completions.with_raw_response.create(
            model="ctxproto", messages=messages
        )

    assert ask("You answer for Kettle Co.").headers["x-ctxproto-cache"] == "miss"
    assert ask("You answer in French.").headers["x-ctxproto-cache"] == "miss"
    assert ask("You answer for Kettle Co.").headers["x-ctxproto-cache"] == "hit"


@pytest.mark.parametrize(
    "shaping",
    [
        {"response_format": {"type": "json_object"}},
        {"stop": ["."]},
        {"logprobs": True},
        {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]},
    ],
    ids=["response_format", "stop", "logprobs", "tools"],
)
def test_a_request_that_shapes_its_answer_skips_the_cache(proxy, shaping):
    question = [{"role": "user", "content": f"What is in the {next(iter(shaping))} box?"}]
    assert (
        client(proxy)
        .chat.completions.with_raw_response.create(model="ctxproto", messages=question)
        .headers["x-ctxproto-cache"]
        == "miss"
    )
    shaped = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=question, **shaping
    )
    assert shaped.headers["x-ctxproto-cache"] == "bypass"


@pytest.mark.parametrize(
    ("shaping", "asked"),
    [
        ({"guided_choice": ["yes", "no"]}, "Can the P3 printer print on both sides?"),
        ({"guided_json": {"type": "object"}}, "Which colours does the V5 vase come in?"),
        ({"guided_regex": "[0-9]+"}, "How many watts does the H8 hair dryer draw?"),
        ({"guided_grammar": 'root ::= "yes" | "no"'}, "Is the L2 lamp dimmable?"),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, "Does the B6 bike fold?"),
        ({"structural_tag": '{"type": "structural_tag"}'}, "What size is the S1 sofa?"),
        ({"grammar": 'root ::= "yes" | "no"'}, "Can the D4 drone fly in rain?"),
        ({"json_schema": {"type": "object"}}, "What does the M2 mixer weigh?"),
        ({"regex": "[0-9]+"}, "How many pages does the N7 notebook have?"),
        ({"ebnf": 'root ::= "yes" | "no"'}, "Is the G9 grill safe on a balcony?"),
        ({"min_tokens": 50}, "Why does my W1 watch strap itch?"),
        ({"stop_token_ids": [13]}, "Where is the reset pin of the R3 radio?"),
        ({"prompt_logprobs": 1}, "When was the C8 camera first sold?"),
        (
            {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
            "Who designed the T6 tent?",
        ),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else "",
)
def test_a_model_server_s_own_field_that_shapes_the_answer_skips_the_cache(
    proxy, scripted, shaping, asked
):
    """vLLM's, SGLang's and llama.cpp's guided decoding constrain an answer as
    ``response_format`` does (to a choice, a regex, a grammar, a schema), ``min_tokens``
    holds it past its end as ``ignore_eos`` does, ``stop_token_ids`` cuts it as ``stop``
    does, ``prompt_logprobs`` asks what a cached answer has not, and an audio answer is
    no text: the cache served such a request a plain answer (one outside the choice
    given), and filed its constrained answer for plain questions."""
    field = next(iter(shaping))
    question = [{"role": "user", "content": asked}]
    ask = openai_client(proxy, "key-b").chat.completions.with_raw_response.create
    assert ask(model="ctxproto", messages=question).headers["x-ctxproto-cache"] == "miss"
    posts = len(scripted.bodies)
    shaped = ask(model="ctxproto", messages=question, extra_body=shaping)
    assert shaped.headers["x-ctxproto-cache"] == "bypass"
    assert len(scripted.bodies) == posts + 1 and scripted.bodies[-1][field] == shaping[field]
    # Plain values ask for a plain answer, as for OpenAI's own fields: the cache serves.
    plain = {"modalities": ["text"]} if field == "modalities" else {field: None}
    again = ask(model="ctxproto", messages=question, extra_body=plain)
    assert again.headers["x-ctxproto-cache"] == "hit"


def test_fields_that_ask_for_a_plain_answer_keep_the_cache(proxy):
    question = [{"role": "user", "content": "Does the K7 kettle have a keep-warm mode?"}]
    first = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=question
    )
    assert first.headers["x-ctxproto-cache"] == "miss"
    for plain in (
        {"tool_choice": "none"},
        {"response_format": {"type": "text"}},
        {"logprobs": False, "stop": None},
    ):
        again = client(proxy).chat.completions.with_raw_response.create(
            model="ctxproto", messages=question, **plain
        )
        assert again.headers["x-ctxproto-cache"] == "hit", plain


def test_a_message_with_an_image_is_forwarded_as_sent(proxy, scripted):
    content = [
        {"type": "text", "text": "What animal is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    messages = [*history, {"role": "user", "content": content}]
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=messages
    )
    assert scripted.bodies[-1]["messages"] == messages
    assert raw.headers["x-ctxproto-cache"] == "bypass"


def test_an_image_in_a_stored_history_still_reaches_the_upstream(proxy, scripted):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    headers = {"x-session-id": f"img-{uuid.uuid4().hex[:8]}", "x-ctxproto-session-mode": "stateful"}
    first = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    client(proxy).chat.completions.create(model="ctxproto", messages=first, extra_headers=headers)
    client(proxy).chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": "And its colour?"}],
        extra_headers=headers,
    )
    assert scripted.bodies[-1]["messages"][0]["content"][1] == image


def test_pipeline_off_forwards_the_messages_as_sent(proxy, scripted):
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 40}
        for i in range(30)
    ]
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=history, extra_headers={"x-ctxproto-pipeline": "off"}
    )
    assert scripted.bodies[-1]["messages"] == history
    assert raw.headers["x-ctxproto-saved-tokens"] == "0"
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="ctxproto", messages=history, extra_headers={"x-ctxproto-cache": "bypass"}
    )
    assert len(scripted.bodies[-1]["messages"]) < len(history)
    assert int(raw.headers["x-ctxproto-saved-tokens"]) > 0


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b'{"messages": "hi"}', 400, "messages"),
        (b'{"model": "ctxproto"}', 400, "messages"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            400,
            "temperature",
        ),
        (b'{"messages": [{"role": "user"}]}', 400, "messages[0]"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stream_options": 3}',
            400,
            "stream_options",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], '
            b'"stream_options": {"include_usage": true}}',
            400,
            "stream_options",
        ),
        (b'{"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}', 404, "model"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "seed": 18446744073709551616}',
            400,
            "seed",
        ),
        # A field of several types is named as sent, not with the type pydantic tried.
        (b'{"messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stop": 5}', 400, "stop"),
        # Python's json reads these, but they are not JSON: no upstream would take them.
        (b'{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": NaN}}', 400, None),
        (b'{"messages": [{"role": "user", "content": "x"}], "top_k": -Infinity}', 400, None),
        # JSON escapes of half a surrogate pair: Python reads them, no UTF-8 encoder takes them.
        (b'{"messages": [{"role": "user", "content": "a \\ud800 b"}]}', 400, "messages[0].content"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"k": "\\udfff"}}',
            400,
            "metadata.k",
        ),
        (b'{"messages": [{"role": "user", "content": "x"}], "\\udc00": 1}', 400, None),
        # The same half written as raw bytes, or a body in UTF-16: Python's json reads
        # both from bytes; JSON between systems is UTF-8 (RFC 8259).
        (b'{"messages": [{"role": "user", "content": "a \xed\xa0\x80 b"}]}', 400, None),
        ('{"messages": [{"role": "user", "content": "x"}]}'.encode("utf-16"), 400, None),
    ],
)
def test_bad_requests_get_the_envelope_and_the_server_keeps_serving(proxy, body, status, param):
    answer = httpx.post(
        f"{proxy.url}/chat/completions",
        content=body,
        headers={"authorization": "Bearer key-a", "content-type": "application/json"},
    )
    assert answer.status_code == status
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["code"], str)
    assert error["param"] == param
    assert answer.headers["x-should-retry"] == "false"
    assert client(proxy).chat.completions.create(model="ctxproto", messages=USER).choices


def test_a_request_with_no_user_message_reaches_the_upstream_as_sent(proxy, scripted):
    """OpenAI answers a system prompt alone or an assistant's turn; the proxy answered
    400 (the pipeline has nothing to answer), and before that forwarded ``[]``."""
    for messages in (
        [{"role": "system", "content": "Greet the user."}],
        [{"role": "assistant", "content": "Hello!"}],
    ):
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="ctxproto", messages=messages
        )
        assert scripted.bodies[-1]["messages"] == messages
        assert raw.headers["x-ctxproto-cache"] == "bypass"


def test_a_refusal_sent_back_as_history_is_what_the_assistant_said(proxy, scripted):
    """OpenAI answers a refusal as ``"content": null`` beside ``refusal``, and a client
    sends that message back with its next turn; the proxy answered that turn with a 400
    (an assistant message with no content), and so every turn after a refusal."""
    refused = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    messages = [
        {"role": "user", "content": "How do I pick the lock of door 12?"},
        refused,
        {"role": "user", "content": "Then how do I reach the caretaker?"},
    ]
    answer = openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto", messages=messages, extra_headers={"x-ctxproto-cache": "bypass"}
    )
    assert answer.choices[0].message.content.endswith("| Then how do I reach the caretaker?")
    said = [m for m in scripted.bodies[-1]["messages"] if m["role"] == "assistant"]
    assert [m["content"] for m in said] == ["I can't help with that."]
    # Content null with no refusal (or an empty one) is still a message that says nothing.
    for silent in ({"role": "assistant", "content": None}, {**refused, "refusal": ""}):
        with pytest.raises(openai.BadRequestError) as refused_error:
            openai_client(proxy, "key-a").chat.completions.create(
                model="ctxproto", messages=[messages[0], silent, messages[2]]
            )
        assert refused_error.value.body["param"] == "messages[1]"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_refusal_is_kept_in_a_stateful_session_s_history(proxy, scripted, stream):
    """A refusal comes as ``refusal`` beside ``"content": null``, streamed as
    ``refusal`` deltas; a streamed one was stored as a turn in which the assistant
    said nothing, and the session's next turn went upstream without it."""
    headers = {
        "x-session-id": f"refuse-{uuid.uuid4().hex[:8]}",
        "x-ctxproto-session-mode": "stateful",
    }
    ask = openai_client(proxy, "key-a").chat.completions.create
    answer = ask(
        model="ctxproto",
        messages=[{"role": "user", "content": "REFUSE"}],
        stream=stream,
        extra_headers=headers,
    )
    if stream:
        refused = "".join(c.choices[0].delta.refusal or "" for c in answer if c.choices)
    else:
        refused = answer.choices[0].message.refusal
    assert refused == REFUSAL
    uncached = {**headers, "x-ctxproto-cache": "bypass"}
    ask(
        model="ctxproto", messages=[{"role": "user", "content": "Why not?"}], extra_headers=uncached
    )
    forwarded = scripted.bodies[-1]["messages"]
    assert [m["role"] for m in forwarded] == ["user", "assistant", "user"]
    assert forwarded[1]["content"] == REFUSAL


def test_a_stateful_session_with_no_user_message_sends_its_history_as_sent(proxy, scripted):
    session = f"greet-{uuid.uuid4().hex[:8]}"
    headers = {"x-session-id": session, "x-ctxproto-session-mode": "stateful"}
    greet = [{"role": "system", "content": "Greet the user."}]
    answer = client(proxy).chat.completions.create(
        model="ctxproto", messages=greet, extra_headers=headers
    )
    assert scripted.bodies[-1]["messages"] == greet
    again = [{"role": "assistant", "content": "Anything else?"}]
    client(proxy).chat.completions.create(model="ctxproto", messages=again, extra_headers=headers)
    reply = {"role": "assistant", "content": answer.choices[0].message.content}
    assert scripted.bodies[-1]["messages"] == [*greet, reply, *again]


def test_a_surrogate_pair_written_as_escapes_is_text(proxy, scripted):
    body = b'{"messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}]}'
    answer = httpx.post(
        f"{proxy.url}/chat/completions",
        content=body,
        headers={"authorization": "Bearer key-a", "content-type": "application/json"},
    )
    assert answer.status_code == 200
    assert scripted.bodies[-1]["messages"][-1]["content"] == "smile \U0001f600"


def test_oversized_and_non_json_bodies(proxy, proxy_state):
    limit = proxy_state.limits.max_body_bytes
    headers = {"authorization": "Bearer key-a", "content-type": "application/json"}
    big = httpx.post(f"{proxy.url}/chat/completions", content=b" " * (limit + 1), headers=headers)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    text = httpx.post(
        f"{proxy.url}/chat/completions",
        content=b"{}",
        headers={**headers, "content-type": "text/plain"},
    )
    assert text.status_code == 415 and text.json()["error"]["type"] == "invalid_request_error"


def test_a_client_that_leaves_mid_body_is_no_internal_error(proxy, proxy_state, caplog):
    import socket
    import time

    errors = proxy_state.metrics.errors
    before = errors.labels(code="internal_error")._value.get()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
        raw.sendall(head + b'{"messages"')
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while not errors.labels(code="client_closed_request")._value.get():
        assert time.monotonic() < deadline, "the disconnect was not counted as the client's"
        time.sleep(0.05)
    assert errors.labels(code="internal_error")._value.get() == before
    assert "unexpected error" not in caplog.text


def test_unknown_key_is_401_in_the_envelope(proxy):
    with pytest.raises(openai.AuthenticationError) as raised:
        client(proxy, key="wrong").chat.completions.create(model="ctxproto", messages=USER)
    assert raised.value.status_code == 401
    assert raised.value.body["code"] == "invalid_api_key"


def test_a_model_is_retrieved_by_its_name(proxy):
    """``client.models.retrieve`` asks ``GET /v1/models/{model}``, which was a 404 for
    the route, even for the names ``GET /v1/models`` lists."""
    models = openai_client(proxy, "key-a").models
    for name in ("ctxproto", "scripted"):
        card = models.retrieve(name)
        assert card.id == name and card.object == "model"
    for unknown in ("gpt-4o", "Qwen/Qwen2.5-7B-Instruct"):  # a name may hold a "/"
        with pytest.raises(openai.NotFoundError) as raised:
            models.retrieve(unknown)
        assert raised.value.body["code"] == "model_not_found"
        assert unknown in raised.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        openai_client(proxy, "wrong").models.retrieve("ctxproto")
    listed = httpx.get(f"{proxy.url}/models/", headers={"authorization": "Bearer key-a"})
    assert [m["id"] for m in listed.json()["data"]] == ["ctxproto", "scripted"]  # the list


def test_models_health_and_metrics(proxy):
    assert [m.id for m in client(proxy).models.list()] == ["ctxproto", "scripted"]
    health = httpx.get(f"{proxy.base_url}/health").json()
    assert health["status"] == "ok" and health["upstream"] == "ok"
    # the session store, the cache's and the summarizer's: every store the proxy opened
    assert [name.split()[0] for name in health["stores"]] == [
        "sessions",
        "semantic_cache",
        "summarizer",
    ]
    assert set(health["stores"].values()) == {"ok"}
    # A labelled histogram has no series before its first request: make one.
    client(proxy).chat.completions.create(model="ctxproto", messages=USER)
    metrics = httpx.get(f"{proxy.base_url}/metrics").text
    for name in (
        "ctxproto_requests_total",
        "ctxproto_cache_hits_total",
        "ctxproto_tokens_saved_total",
        "ctxproto_cached_prefix_tokens_total",
        "ctxproto_upstream_latency_seconds_bucket",
        "ctxproto_errors_total",
    ):
        assert name in metrics
    missing = httpx.get(f"{proxy.base_url}/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_wrong_method_is_405_saying_which_are_allowed(proxy):
    answer = httpx.get(f"{proxy.url}/chat/completions")
    assert answer.status_code == 405
    assert answer.json()["error"]["code"] == "method_not_allowed"
    assert answer.headers["allow"] == "POST"


def test_building_the_app_leaves_the_process_logging_alone(proxy_state):
    """The MCP SDK's constructor calls ``logging.basicConfig``; the app must not let it stick."""
    import logging

    from ctxproto.serve import create_app

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # pytest's capture handlers sit on the root logger, and basicConfig does nothing
    # to a logger that has handlers: start from an unconfigured process.
    root.handlers = []
    root.setLevel(logging.WARNING)
    try:
        create_app(proxy_state)
        assert root.handlers == []
        assert root.level == logging.WARNING
    finally:
        root.handlers = handlers
        root.setLevel(level)
