# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""Tenants never share cache entries, summaries or sessions; keys and limits hold."""

from __future__ import annotations

import threading
import uuid
from typing import Any
from urllib.parse import unquote

import httpx
import openai
import pytest

from ctxproto.serve.config import TenantConfig
from ctxproto.serve.envelope import APIError
from ctxproto.serve.tenancy import MAX_SESSION_ID_CHARS, Tenants, TenantSlot, session_id
from ctxproto.stores.session_state import SessionStateStore
from tests.serve.clients import openai_client

pytestmark = pytest.mark.models


def test_same_question_never_hits_another_tenants_cache(proxy, scripted):
    question = [
        {"role": "user", "content": f"What does plan {uuid.uuid4().hex[:6]} cost per month?"}
    ]
    a = openai_client(proxy, "key-a").chat.completions.with_raw_response
    b = openai_client(proxy, "key-b").chat.completions.with_raw_response
    assert a.create(model="ctxproto", messages=question).headers["x-ctxproto-cache"] == "miss"
    assert a.create(model="ctxproto", messages=question).headers["x-ctxproto-cache"] == "hit"
    posts = len(scripted.bodies)
    assert b.create(model="ctxproto", messages=question).headers["x-ctxproto-cache"] == "miss"
    assert len(scripted.bodies) == posts + 1
    assert scripted.bodies[-1]["cache_salt"] == "ctxproto-tenant-tenant-b"


def test_summaries_stay_with_their_tenant(proxy, scripted, state_dir):
    session = f"shared-{uuid.uuid4().hex[:8]}"
    secret = "my locker code is 918273"
    turns = [secret] + [f"tell me about topic {i} please" for i in range(8)]
    messages: list[Any] = []
    for text in turns:
        messages.append({"role": "user", "content": text})
        answer = openai_client(proxy, "key-a").chat.completions.create(
            model="ctxproto", messages=messages, extra_headers={"x-session-id": session}
        )
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    assert any(secret in m["content"] for m in scripted.bodies[-1]["messages"])  # summary kept it
    summaries = SessionStateStore(state_dir / "summaries", namespace="summaries")
    assert summaries.get("tenant-a", session) is not None
    other = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}] * 4
    openai_client(proxy, "key-b").chat.completions.create(
        model="ctxproto",
        messages=[*other, {"role": "user", "content": "what is my code?"}],
        extra_headers={"x-session-id": session},
    )
    assert not any("918273" in (m.get("content") or "") for m in scripted.bodies[-1]["messages"])
    assert summaries.get("tenant-b", session) is None or "918273" not in str(
        summaries.get("tenant-b", session)
    )


def test_stateful_sessions_are_per_tenant(proxy):
    session = f"s-{uuid.uuid4().hex[:8]}"
    headers = {"x-session-id": session, "x-ctxproto-session-mode": "stateful"}
    openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto", messages=[{"role": "user", "content": "alpha"}], extra_headers=headers
    )
    answer = openai_client(proxy, "key-b").chat.completions.create(
        model="ctxproto", messages=[{"role": "user", "content": "beta"}], extra_headers=headers
    )
    assert answer.choices[0].message.content == "beta | beta"  # nothing of tenant a's "alpha"


def test_a_stateful_session_may_be_named_like_a_derived_one(proxy):
    session = f"conv-{uuid.uuid4().hex[:8]}"
    headers = {"x-session-id": session, "x-ctxproto-session-mode": "stateful"}
    for text in ("alpha", "beta"):
        answer = openai_client(proxy, "key-a").chat.completions.create(
            model="ctxproto", messages=[{"role": "user", "content": text}], extra_headers=headers
        )
    assert answer.choices[0].message.content == "alpha | beta"  # the stored history was used


@pytest.mark.parametrize("named_by", ["x-session-id", "user"])
def test_session_ids_that_differ_past_the_cap_are_never_one_session(proxy, named_by):
    # Both were cut to their first 200 characters: the second user's turn went
    # upstream with the first user's stored conversation before it. Then a long id
    # was a 400, and OpenAI clients that send a long ``user`` were refused; now each
    # stands for the digest of all of it, a session of its own.
    shared = f"s-{uuid.uuid4().hex}".ljust(MAX_SESSION_ID_CHARS, "x")
    client = openai_client(proxy, "key-a")

    def turn(user: str, text: str) -> str | None:
        name = f"{shared}-{user}"
        named: dict[str, str] = {}
        headers = {"x-ctxproto-session-mode": "stateful"}
        if named_by == "user":
            named = {"user": name}
        else:
            headers[named_by] = name
        answer = client.chat.completions.create(
            model="ctxproto",
            messages=[{"role": "user", "content": text}],
            extra_headers=headers,
            **named,
        )
        content: str | None = answer.choices[0].message.content
        return content

    for user in ("alice", "bob"):  # neither sees the other's history
        assert turn(user, f"{user}'s secret") == f"{user}'s secret | {user}'s secret"
    assert turn("alice", "again") == "alice's secret | again"  # one session turn after turn
    at_cap = openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-session-id": shared, "x-ctxproto-session-mode": "stateful"},
    )
    assert at_cap.choices[0].message.content == "hello | hello"


def test_the_session_mode_header_is_read_as_the_other_headers_are(proxy):
    # Case-insensitive, as x-ctxproto-cache and x-ctxproto-pipeline are: read as
    # stateless, the history would be left out without a word.
    headers = {"x-session-id": f"s-{uuid.uuid4().hex[:8]}", "x-ctxproto-session-mode": "Stateful"}
    for text in ("alpha", "beta"):
        answer = openai_client(proxy, "key-a").chat.completions.create(
            model="ctxproto", messages=[{"role": "user", "content": text}], extra_headers=headers
        )
    assert answer.choices[0].message.content == "alpha | beta"
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(proxy, "key-a").chat.completions.create(
            model="ctxproto",
            messages=[{"role": "user", "content": "gamma"}],
            extra_headers={**headers, "x-ctxproto-session-mode": "statefull"},
        )
    assert raised.value.body["param"] == "x-ctxproto-session-mode"


def test_tenant_concurrency_limit_is_429_with_retry_after(proxy):
    results: list[object] = []

    def slow() -> None:
        stream = openai_client(proxy, "key-c").chat.completions.create(
            model="ctxproto",
            messages=[{"role": "user", "content": "SLOW 0.2 a b c d e"}],
            stream=True,
        )
        results.append(list(stream))

    worker = threading.Thread(target=slow)
    worker.start()
    import time

    time.sleep(0.4)
    with pytest.raises(openai.RateLimitError) as raised:
        openai_client(proxy, "key-c").chat.completions.create(
            model="ctxproto", messages=[{"role": "user", "content": "second"}]
        )
    assert raised.value.response.headers["retry-after"] == "1"
    worker.join()
    assert (
        results
        and openai_client(proxy, "key-c")
        .chat.completions.create(model="ctxproto", messages=[{"role": "user", "content": "after"}])
        .choices
    )


def test_a_refused_request_frees_its_tenant_slot(proxy):
    # Valid on the wire, refused by the pipeline (a tool call without its function).
    broken = [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "user", "content": "next"},
    ]
    for _ in range(2):  # a leaked slot would make the second one a 429
        with pytest.raises(openai.BadRequestError):
            openai_client(proxy, "key-c").chat.completions.create(model="ctxproto", messages=broken)
    answer = openai_client(proxy, "key-c").chat.completions.create(
        model="ctxproto", messages=[{"role": "user", "content": "fine"}]
    )
    assert answer.choices[0].message.content == "fine | fine"


def test_a_stream_left_at_once_frees_its_tenant_slot(proxy):
    import json
    import socket
    import time

    body = json.dumps(
        {"messages": [{"role": "user", "content": "SLOW 0.2 a b c"}], "stream": True}
    ).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-c\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
        raw.sendall(head + body)
    deadline = time.monotonic() + 5
    while True:
        try:
            answer = openai_client(proxy, "key-c").chat.completions.create(
                model="ctxproto", messages=[{"role": "user", "content": "again"}]
            )
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the left stream kept its tenant slot"
            time.sleep(0.1)
    assert answer.choices[0].message.content == "again | again"


@pytest.mark.parametrize("stream", [False, True])
def test_a_user_in_any_script_is_answered_and_its_turn_stored_once(proxy, proxy_state, stream):
    # The session id went into a response header as it was: "ユーザー" made the
    # answer a 500 after its turn was stored (a retry stored it twice), and a line
    # break got the client no answer at all.
    user = f"ユーザー {uuid.uuid4().hex[:6]}\r\nx-injected: 1"
    body = {"messages": [{"role": "user", "content": "hello"}], "user": user, "stream": stream}
    headers = {"authorization": "Bearer key-a", "x-ctxproto-session-mode": "stateful"}
    answer = httpx.post(f"{proxy.url}/chat/completions", json=body, headers=headers)
    assert answer.status_code == 200 and "x-injected" not in answer.headers
    echoed = answer.headers["x-ctxproto-session"]
    assert echoed.isascii() and unquote(echoed) == f"user-{user}"
    history = proxy_state.flow.history("tenant-a", f"user-{user}")
    assert history == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello | hello"},
    ]


def test_a_slot_is_free_once_its_request_and_its_work_both_ended():
    tenant = TenantConfig(id="t", key="k", max_concurrent_requests=1)
    tenants = Tenants({"k": tenant})
    slot = TenantSlot(tenants, tenant)  # the request
    with slot.held():  # the work it started
        slot.release()  # the client hung up; the work runs on
        with pytest.raises(APIError):
            TenantSlot(tenants, tenant)
    other = TenantSlot(tenants, tenant)  # free once the work ended
    # Work that starts after its request ended takes the slot anew: over the limit, refused.
    with pytest.raises(APIError) as refused, slot.held():
        pass
    assert refused.value.status == 429
    other.release()


def test_session_id_sources_in_order():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "first"}]
    later = [*messages, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    assert session_id({"x-session-id": "h1", "helicone-session-id": "h2"}, "u", messages) == "h1"
    assert session_id({"x-litellm-session-id": "l"}, "u", messages) == "l"
    assert session_id({"helicone-session-id": "h"}, None, messages) == "h"
    assert session_id({}, "u7", messages) == "user-u7"
    assert session_id({}, None, messages) == session_id({}, None, later)  # stable over turns
    assert session_id({}, None, messages) != session_id(
        {}, None, [{"role": "user", "content": "x"}]
    )


def _invalidate(proxy, key: str, body: Any) -> httpx.Response:
    url = f"{proxy.base_url}/v1/ctxproto/invalidate"
    return httpx.post(url, json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_only_admin_keys_may_invalidate_sources(proxy):
    """Sources are shared by every tenant: dropping answers built on one is an admin act."""
    refused = _invalidate(proxy, "key-a", {"source": "faq.md"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert _invalidate(proxy, "no-such-key", {"source": "faq.md"}).status_code == 401
    done = _invalidate(proxy, "key-ops", {"source": "faq.md"})
    assert done.status_code == 200
    assert done.json() == {"object": "ctxproto.invalidation", "source": "faq.md", "dropped": 0}


@pytest.mark.parametrize(
    ("body", "param"), [({}, "source"), ({"source": ""}, "source"), ({"source": "a", "x": 1}, "x")]
)
def test_a_bad_invalidation_is_400_naming_the_field(proxy, body, param):
    answer = _invalidate(proxy, "key-ops", body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
