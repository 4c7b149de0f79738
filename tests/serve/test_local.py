# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""The proxy over the bundled runtime: in-process, and through the runtime's own server."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any, ClassVar

import httpx
import openai
import pytest

from ctxproto.context import Context
from ctxproto.documents import Document
from ctxproto.stages import Stage, Transformed
from ctxproto.tokens import TokenCounter
from tests.serve.hung_up import post_and_hang_up

pytestmark = pytest.mark.models


def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Name a colour. ({uuid.uuid4().hex[:8]})"}]


@pytest.fixture(params=["local", "remote"])
def any_proxy(request, local_proxy, remote_runtime_proxy):
    return local_proxy if request.param == "local" else remote_runtime_proxy


def test_chat_and_stream_equal_the_engine(any_proxy, engine):
    from ctxproto.runtime import GenerationParams

    messages = question()
    expected = engine.generate(messages, GenerationParams(max_new_tokens=4)).text
    client = openai.OpenAI(base_url=any_proxy.url, api_key="none", max_retries=0)
    plain = client.chat.completions.create(
        model="default", messages=messages, max_tokens=4, temperature=0
    )
    assert plain.choices[0].message.content == expected
    stream = client.chat.completions.create(
        model="ctxproto",
        messages=messages,
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_cached_tokens_zero_is_sent(local_proxy):
    # A fresh cache_salt: a namespace of its own, where nothing is cached yet.
    body = {"messages": question(), "max_tokens": 1, "cache_salt": uuid.uuid4().hex}
    usage = httpx.post(f"{local_proxy.url}/chat/completions", json=body, timeout=120).json()[
        "usage"
    ]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_history_as_openai_returned_it_is_accepted(local_proxy):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "refusal": None, "annotations": []},
        {"role": "user", "content": "Bye"},
    ]
    for pipeline in ("on", "off"):
        answer = httpx.post(
            f"{local_proxy.url}/chat/completions",
            json={"messages": messages, "max_tokens": 1},
            headers={"x-ctxproto-pipeline": pipeline},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text


def test_an_image_for_the_text_only_model_is_a_400_naming_the_part(local_proxy):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, image]}]}
    answer = httpx.post(f"{local_proxy.url}/chat/completions", json=body, timeout=120)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "messages[0].content"
    assert "image_url" in answer.json()["error"]["message"]


def _idle(engine, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not len(engine._batch) and not engine._waiting:
            return True
        time.sleep(0.05)
    return False


def test_stream_disconnect_stops_decoding(local_proxy, engine):
    client = openai.OpenAI(base_url=local_proxy.url, api_key="none", max_retries=0)
    stream = client.chat.completions.create(
        model="ctxproto",
        messages=question(),
        max_tokens=400,
        temperature=0.8,
        seed=1,
        stop=None,
        stream=True,
    )
    for index, _ in enumerate(stream):
        if index == 2:
            break
    stream.close()
    assert _idle(engine, within_s=5.0)  # 400 tokens would take far longer on CPU


def test_non_streaming_disconnect_stops_decoding(local_proxy, engine):
    body = (
        b'{"messages": [{"role": "user", "content": "Write a long story."}],'
        b' "max_tokens": 400, "temperature": 0.8, "seed": 2}'
    )
    with socket.create_connection(("127.0.0.1", local_proxy.port)) as raw:
        raw.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 30
        while not len(engine._batch) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(engine._batch)  # decoding started
    assert _idle(engine, within_s=5.0)


SUPPORT = {"role": "system", "content": "You are the support assistant of Acme. Answer briefly."}
TOGETHER: list[dict[str, Any]] = [
    # The shortest first: the first joiner of an empty batch once decoded as if padded.
    {"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 10},
    {
        "messages": [SUPPORT, {"role": "user", "content": "How long is the R7's warranty?"}],
        "max_tokens": 12,
        "stream": True,
    },
    {
        "messages": [SUPPORT, {"role": "user", "content": "Which products does Acme sell?"}],
        "max_tokens": 16,
        "stop": ["\n"],
    },
    {
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_completion_tokens": 6,
        "stream": True,
    },
]


async def _greedy(
    client: openai.AsyncOpenAI, request: dict[str, Any], salt: str
) -> tuple[str, str, int]:
    """Text, finish reason and completion tokens of one greedy answer, streamed or not."""
    options = {**request, "model": "default", "temperature": 0, "extra_body": {"cache_salt": salt}}
    if not request.get("stream"):
        answer = await client.chat.completions.create(**options)
        choice = answer.choices[0]
        return choice.message.content, choice.finish_reason, answer.usage.completion_tokens
    stream = await client.chat.completions.create(**options, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    return text, finish[-1], chunks[-1].usage.completion_tokens


def test_clients_decoded_together_get_the_answers_they_get_alone(runtime_server):
    """Requests admitted in one round share one decode batch; each client must get the
    answer its request gets alone (each run in a cache namespace of its own)."""
    # Its prefill keeps the engine busy while the others arrive, and its one token ends
    # it there: they are then admitted together, into an empty batch.
    gate = {"messages": [{"role": "user", "content": "Say: " + "lorem ipsum " * 400}]}

    async def one_at_a_time() -> list[tuple[str, str, int]]:
        async with openai.AsyncOpenAI(
            base_url=runtime_server.url, api_key="none", max_retries=0
        ) as client:
            return [await _greedy(client, r, uuid.uuid4().hex) for r in TOGETHER]

    async def at_once() -> list[tuple[str, str, int]]:
        salt = uuid.uuid4().hex
        async with openai.AsyncOpenAI(
            base_url=runtime_server.url, api_key="none", max_retries=0
        ) as client:
            busy = asyncio.ensure_future(_greedy(client, {**gate, "max_tokens": 1}, salt))
            await asyncio.sleep(0.3)
            answers = await asyncio.gather(*(_greedy(client, r, salt) for r in TOGETHER))
            await busy
        return list(answers)

    assert asyncio.run(at_once()) == asyncio.run(one_at_a_time())


def test_a_client_leaving_mid_stream_stops_its_answer_not_the_others(runtime_server, engine):
    client = openai.OpenAI(base_url=runtime_server.url, api_key="none", max_retries=0)
    staying = {"model": "default", "messages": question(), "max_tokens": 16, "temperature": 0}
    alone = client.chat.completions.create(**staying).choices[0].message.content
    stays = client.chat.completions.create(**staying, stream=True)
    text = [next(stays).choices[0].delta.content or ""]  # decoding, before the other joins
    leaves = client.chat.completions.create(
        model="default", messages=question(), max_tokens=400, temperature=0.8, stream=True
    )
    for index, _ in enumerate(leaves):
        if index == 2:
            break
    leaves.close()
    text += [c.choices[0].delta.content or "" for c in stays if c.choices]
    assert "".join(text) == alone
    assert _idle(engine, within_s=5.0)  # 400 tokens would take far longer on CPU


class _Manual(Stage):
    """Retrieves the same manual page for every question, as a retriever would."""

    type_name: ClassVar[str] = "test_manual"

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        page = Document(id="manual", text="The R7 router has four LAN ports and one WAN port.")
        return Transformed(context.model_copy(update={"documents": [page]}))


def test_documents_placed_with_the_question_are_not_left_in_the_cache(engine):
    """The next turn does not send them again: only the system message stays cached."""
    from ctxproto.pipeline import Pipeline
    from ctxproto.runtime.radix_cache import common_prefix_length
    from ctxproto.serve import ContextFlow, ProxyState, ServerThread, create_app
    from ctxproto.serve.local_upstream import LocalUpstream

    state = ProxyState(
        flow=ContextFlow(Pipeline([_Manual()], documents_position="query")),
        upstream=LocalUpstream(engine, model="default"),
        models=["default"],
    )
    system = {"role": "system", "content": "Answer from the reference documents."}
    body = {
        "messages": [system, {"role": "user", "content": "How many ports does the R7 have?"}],
        "max_tokens": 4,
        "temperature": 0,
        "cache_salt": uuid.uuid4().hex,  # a namespace of its own
    }
    with ServerThread(create_app(state)) as proxy:
        first, again = (
            httpx.post(f"{proxy.url}/chat/completions", json=body, timeout=120).json()
            for _ in range(2)
        )
    # What stayed is what the client's next turn repeats: the system message.
    sent = engine.encode_chat(
        [system, {"role": "user", "content": "Reference: the manual.\nHow many ports?"}]
    )
    repeated = common_prefix_length(engine.encode_chat(body["messages"]), sent)
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": repeated}
    assert again["choices"][0]["message"] == first["choices"][0]["message"]


def test_health_is_503_once_the_engine_takes_no_more_requests(engine, monkeypatch):
    """A scheduler fault fails every later request at once; the proxy must say so."""
    from ctxproto.errors import BackendError
    from ctxproto.serve import ContextFlow, ProxyState, ServerThread, create_app
    from ctxproto.serve.local_upstream import LocalUpstream

    state = ProxyState(
        flow=ContextFlow(None),
        upstream=LocalUpstream(engine, model="default"),
        models=["default"],
    )
    with ServerThread(create_app(state)) as proxy:
        assert httpx.get(f"{proxy.base_url}/health", timeout=30).status_code == 200
        fault = BackendError("the engine's scheduler failed: RuntimeError('out of memory')")
        monkeypatch.setattr(engine, "_failure", fault)
        down = httpx.get(f"{proxy.base_url}/health", timeout=30)
    assert down.status_code == 503
    assert "out of memory" in down.json()["upstream"]


def test_a_prediction_keeps_the_answer_and_reports_its_tokens_as_openai_does(any_proxy):
    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    client = openai.OpenAI(base_url=any_proxy.url, api_key="none", max_retries=0)
    options = {"model": "default", "messages": messages, "max_tokens": 24, "temperature": 0}
    plain = client.chat.completions.create(**options)
    expected = plain.choices[0].message.content
    assert plain.usage.completion_tokens_details.accepted_prediction_tokens == 0
    predicted = client.chat.completions.create(
        **options, prediction={"type": "content", "content": [{"type": "text", "text": expected}]}
    )
    assert predicted.choices[0].message.content == expected
    details = predicted.usage.completion_tokens_details
    assert details.accepted_prediction_tokens >= plain.usage.completion_tokens // 2
    assert details.rejected_prediction_tokens < details.accepted_prediction_tokens


def test_a_prediction_of_another_type_is_a_400_naming_it(local_proxy):
    body = {"messages": question(), "max_tokens": 1, "prediction": {"type": "code", "content": "x"}}
    response = httpx.post(f"{local_proxy.url}/chat/completions", json=body, timeout=120)
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("prediction")


def test_a_null_temperature_samples_at_openais_default():
    from ctxproto.serve.local_upstream import generation_params

    assert generation_params({"temperature": None}).temperature == 1.0
    assert generation_params({}).temperature == 1.0
    assert generation_params({"temperature": 0}).greedy


def _decoding_for_nobody(engine, within_s: float = 2.0) -> int:
    """Requests the engine holds (queued, joining or decoding) that nobody cancelled, once
    it holds any: one being prefilled is in none of its lists."""
    deadline = time.monotonic() + within_s
    while True:
        held = [*engine._waiting, *(r for r, _ in engine._joining), *engine._batch.requests]
        if held or time.monotonic() > deadline:
            return sum(not request.cancelled.is_set() for request in held)
        time.sleep(0.01)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_client_gone_before_the_stream_started_cancels_its_decoding(engine, spec_version):
    """The stream's body was never started, so the generator whose ``finally`` cancels
    the engine's request never ran: the engine decoded the whole answer for nobody."""
    from ctxproto.serve import ContextFlow, ProxyState, create_app
    from ctxproto.serve.local_upstream import LocalUpstream

    state = ProxyState(flow=ContextFlow(None), upstream=LocalUpstream(engine, model="default"))
    body = {"messages": question(), "max_tokens": 128, "ignore_eos": True, "stream": True}
    assert _idle(engine, within_s=60.0)
    asyncio.run(post_and_hang_up(create_app(state), body, spec_version=spec_version))
    left = _decoding_for_nobody(engine)
    assert _idle(engine, within_s=60.0)  # the next test finds the engine as it was
    assert left == 0
    assert state.tenants._in_flight == {"default": 0}
