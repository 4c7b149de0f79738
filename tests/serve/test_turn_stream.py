# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""A streamed turn is filed once its answer is whole, whether or not the client stays
for ``[DONE]``; never when cut short, nor when the client was told it failed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ctxproto.errors import StoreError
from ctxproto.serve import ContextFlow, ProxyState, RemoteUpstream, ServerThread, create_app
from ctxproto.stores.session_state import SessionStateStore
from tests.serve.clients import openai_client

pytestmark = pytest.mark.models  # the semantic cache's embedder

STATEFUL = {"x-ctxproto-session-mode": "stateful"}


def _stream_until(proxy: ServerThread, session: str, text: str, *, chunks_with: str) -> str:
    """Stream a stateful turn and hang up after the first chunk whose delta has
    ``chunks_with`` (``finish_reason`` or ``content``); the answer's text so far."""
    body = {
        "model": "ctxproto",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": text}],
    }
    headers = {**STATEFUL, "x-session-id": session, "authorization": "Bearer key-a"}
    received = ""
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{proxy.url}/chat/completions", json=body, headers=headers) as answer,
    ):
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[len("data: ") :])["choices"]
            received += "".join(c["delta"].get("content") or "" for c in choices)
            if any(c.get(chunks_with) or c["delta"].get(chunks_with) for c in choices):
                break  # leaving the block closes the connection
    return received


def _next_turn(proxy: ServerThread, session: str) -> str:
    """The first user message of the session's next turn, as the upstream saw it (it
    answers "<first user message> | <last user message>")."""
    text = f"Anything else about {uuid.uuid4().hex}?"  # no other test's cached answer
    answer = openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": text}],
        extra_headers={**STATEFUL, "x-session-id": session, "cache-control": "no-cache"},
    )
    first, _, last = answer.choices[0].message.content.partition(" | ")
    assert last == text
    return first


def _cache_status(proxy: ServerThread, text: str) -> str:
    raw = openai_client(proxy, "key-a").chat.completions.with_raw_response.create(
        model="ctxproto", messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-ctxproto-cache"]


def test_a_client_that_hangs_up_on_the_finish_reason_keeps_its_turn(proxy: Any) -> None:
    """The turn was filed only when the upstream's stream ended: a client that left
    after the finish reason, with the usage chunk and ``[DONE]`` still to come, had
    the whole answer, and its next turn found no trace of it."""
    session = f"hangup-{uuid.uuid4().hex[:8]}"
    question = f"LINGER 5 Which antenna fits the R{uuid.uuid4().hex[:6]} router?"
    text = _stream_until(proxy, session, question, chunks_with="finish_reason")
    assert text == f"{question} | {question}"
    # At once: the session's next turn waits for this one to be filed.
    assert _next_turn(proxy, session) == question
    assert _cache_status(proxy, question) == "hit"  # the whole answer was cached too


def test_an_answer_cut_short_by_the_client_is_filed_nowhere(proxy: Any) -> None:
    session = f"cut-{uuid.uuid4().hex[:8]}"
    question = f"SLOW 0.1 Which charger fits the P{uuid.uuid4().hex[:6]} phone? " + "w " * 20
    text = _stream_until(proxy, session, question, chunks_with="content")
    assert text == "SLOW"
    assert _next_turn(proxy, session).startswith("Anything else")  # the turn was not stored
    assert _cache_status(proxy, question) == "miss"


def test_a_turn_that_failed_after_its_finish_reason_is_not_stored(proxy: Any) -> None:
    session = f"late-{uuid.uuid4().hex[:8]}"
    question = f"LATEFAIL Where is the reset pin of the M{uuid.uuid4().hex[:6]} modem?"
    stream = openai_client(proxy, "key-a").chat.completions.create(
        model="ctxproto",
        messages=[{"role": "user", "content": question}],
        stream=True,
        extra_headers={**STATEFUL, "x-session-id": session},
    )
    with pytest.raises(openai.APIError, match="scripted failure"):
        for _ in stream:
            pass
    assert _next_turn(proxy, session).startswith("Anything else")  # the turn was not stored
    assert _cache_status(proxy, question) == "miss"


class _RefusingStore(SessionStateStore):
    """A session store that is down for writes, as a Redis server that went away."""

    def update(
        self,
        tenant_id: str,
        session_id: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any]],
    ) -> dict[str, Any]:
        raise StoreError("the session store refused the write")


def test_a_turn_that_could_not_be_stored_ends_with_an_error_event(
    scripted: Any, tmp_path: Path
) -> None:
    """Not a stream broken off with no word of why: the client must not take the turn
    for stored, and the next one for following it."""
    state = ProxyState(
        flow=ContextFlow(None, store=_RefusingStore(tmp_path / "sessions")),
        upstream=RemoteUpstream(scripted.url, model="scripted"),
    )
    with ServerThread(create_app(state)) as server:
        stream = openai_client(server, "-").chat.completions.create(
            model="ctxproto",
            messages=[{"role": "user", "content": "Is the answer kept?"}],
            stream=True,
            extra_headers={**STATEFUL, "x-session-id": "refused"},
        )
        with pytest.raises(openai.APIError, match="refused the write"):
            for _ in stream:
                pass
    state.flow.store.close()
