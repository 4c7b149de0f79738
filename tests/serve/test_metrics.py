# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""What ``GET /metrics`` counts, read as a scraper reads it, after real requests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ctxproto.budget import Budget
from ctxproto.pipeline import Pipeline
from ctxproto.serve import ContextFlow, ProxyState, RemoteUpstream, ServerThread, create_app
from ctxproto.stages.recency_window import RecencyWindow
from tests.serve.clients import openai_client
from tests.serve.scraped import metric


@pytest.fixture(scope="module")
def server(scripted: Any) -> Iterator[ServerThread]:
    """A proxy of its own (no semantic cache: no model to load), so counts are its alone."""
    state = ProxyState(
        flow=ContextFlow(Pipeline([RecencyWindow(max_tokens=400)], Budget(max_prompt_tokens=1500))),
        upstream=RemoteUpstream(scripted.url, model="scripted"),
        models=["ctxproto", "scripted"],
    )
    with ServerThread(create_app(state)) as running:
        yield running


def _client_left(server: ServerThread) -> float:
    return metric(server, "ctxproto_errors_total", code="client_closed_request")


def _answered(server: ServerThread) -> float:
    """The chat requests it answered (no cache in this proxy: all ``bypass``)."""
    return metric(
        server,
        "ctxproto_requests_total",
        route="chat_completions",
        tenant="default",
        cache="bypass",
    )


def _counted_by_then(server: ServerThread, before: float) -> float:
    """The clients-left count once it moved (the server sees a hang-up a moment later)."""
    deadline = time.monotonic() + 5
    while _client_left(server) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return _client_left(server)


def test_a_stream_the_client_cuts_short_is_counted_as_the_clients(server: ServerThread) -> None:
    """It was counted nowhere: not answered, no error, as if it never came, while a
    client that left mid-body was counted as ``client_closed_request``."""
    before = _client_left(server)
    answered = _answered(server)
    stream = openai_client(server, "unused").chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": f"SLOW 0.2 {uuid.uuid4().hex} " + "w " * 20}],
        stream=True,
    )
    for index, _ in enumerate(stream):
        if index == 2:
            break
    stream.close()
    assert _counted_by_then(server, before) == before + 1
    # Not an answered request, and not counted twice.
    assert _answered(server) == answered
    time.sleep(0.3)
    assert _client_left(server) == before + 1


def test_a_plain_request_whose_client_leaves_is_counted_as_the_clients(
    server: ServerThread,
) -> None:
    before = _client_left(server)
    body = {"messages": [{"role": "user", "content": f"STALL 2 {uuid.uuid4().hex}"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/chat/completions", json=body, timeout=0.5)
    assert _counted_by_then(server, before) == before + 1


def test_a_whole_answer_is_no_client_cut(server: ServerThread) -> None:
    """Streamed to its end, or left on its finish reason (the answer is whole and kept)."""
    before = _client_left(server)
    stream = openai_client(server, "unused").chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": f"LINGER 1 {uuid.uuid4().hex}"}],
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            break
    stream.close()
    answer = openai_client(server, "unused").chat.completions.create(
        model="ctxproto", messages=[{"role": "user", "content": uuid.uuid4().hex}], stream=True
    )
    assert list(answer)
    time.sleep(1.5)
    assert _client_left(server) == before


def test_a_stream_read_to_its_end_with_no_finish_reason_is_no_client_cut(
    server: ServerThread,
) -> None:
    """An upstream that sends no finish reason leaves its answer unfiled, and a client
    that read it to ``[DONE]`` was counted as ``client_closed_request`` all the same;
    it is an answered request, counted as one."""
    before = _client_left(server)
    answered = _answered(server)
    stream = openai_client(server, "unused").chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": f"NOFINISH {uuid.uuid4().hex}"}],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    time.sleep(1.0)
    assert _client_left(server) == before
    assert _answered(server) == (answered + 1)
