"""``sessions.idle_ttl_s``: the proxy forgets a stateful session idle past it, and sweeps
its rows without a request; a TTL that is no positive finite number exits 2."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ctxproto.cli import main
from ctxproto.serve import ProxyState, ServerThread, create_app
from ctxproto.serve.config import ServeConfig
from ctxproto.stores.session_state import SessionStateStore
from tests.servers_redis import free_port

TTL = 1.0


def rows(folder: Path) -> int:
    with sqlite3.connect(folder / "cache.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM Cache").fetchone()
    return int(count)


def ask(server: ServerThread, session: str, text: str) -> str:
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "scripted", "messages": [{"role": "user", "content": text}]},
        headers={"x-session-id": session},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_a_stateful_session_idle_past_the_ttl_starts_afresh_and_its_rows_are_swept(
    tmp_path: Path, scripted: Any
):
    folder = tmp_path / "sessions"
    config = ServeConfig.model_validate(
        {
            "upstream": {"type": "openai", "base_url": scripted.url, "model": "scripted"},
            "sessions": {"mode": "stateful", "store": str(folder), "idle_ttl_s": TTL},
        }
    )
    state = ProxyState.from_config(config)
    with ServerThread(create_app(state)) as server:
        assert ask(server, "kept", "first") == "first | first"
        assert ask(server, "kept", "second") == "first | second"  # the history is kept
        ask(server, "idle", "hello")
        assert rows(folder) == 2
        time.sleep(TTL + 0.3)
        assert state.flow.store.get("default", "idle") is None
        assert ask(server, "kept", "third") == "third | third"  # idle past it: forgotten
        deadline = time.monotonic() + 10  # the sweeper runs every second at least
        while rows(folder) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rows(folder) == 1  # "idle" swept with no request naming it
    state.flow.store.close()


def namespaced_rows(folder: Path, namespace: str) -> int:
    with sqlite3.connect(folder / "cache.db") as db:
        keys = [key for (key,) in db.execute("SELECT key FROM Cache WHERE raw = 1")]
    return sum(json.loads(key)[1] == namespace for key in keys)


def test_the_summarizers_state_written_before_the_ttl_is_swept_at_start(
    tmp_path: Path, scripted: Any
):
    """The pipeline summarizer's folder and the MCP memory's summaries are swept as the
    sessions are: only the sessions' store was, and their rows stayed for ever."""
    sessions, summaries = tmp_path / "sessions", tmp_path / "summaries"
    for folder, namespace in ((summaries, "summaries"), (sessions, "mcp-summaries")):
        before = SessionStateStore(folder, namespace=namespace)  # before the TTL
        before.put("default", "old", {"summary": "kept for ever"})
        before.close()
    time.sleep(TTL + 0.3)
    summarizer = {"model": None, "state_path": str(summaries), "state_idle_ttl_s": TTL}
    config = ServeConfig.model_validate(
        {
            "pipeline": {"stages": [{"type": "summarizer", "init_parameters": summarizer}]},
            "upstream": {"type": "openai", "base_url": scripted.url, "model": "scripted"},
            "sessions": {"store": str(sessions), "idle_ttl_s": TTL},
        }
    )
    state = ProxyState.from_config(config)
    app = create_app(state)
    assert app.state.mcp is not None  # the MCP memory's summaries are in the sessions' folder
    with ServerThread(app):
        assert namespaced_rows(summaries, "summaries") == 0
        assert namespaced_rows(sessions, "mcp-summaries") == 0
    state.flow.store.close()


@pytest.mark.parametrize("value", ["0", "-5", ".inf", "true", "'soon'"])
def test_an_idle_ttl_that_is_no_positive_finite_number_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
):
    path = tmp_path / "serve.yaml"
    path.write_text(f"sessions: {{idle_ttl_s: {value}}}\n")
    assert main(["serve", str(path)]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert str(path) in err and "sessions.idle_ttl_s" in err
    assert main(["mcp", str(path)]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert str(path) in err and "sessions.idle_ttl_s" in err


@pytest.mark.parametrize("command", ["serve", "mcp"])
def test_a_store_that_cannot_be_swept_at_start_fails_it_with_one_line_naming_the_store(
    tmp_path: Path, scripted: Any, capsys: pytest.CaptureFixture[str], command: str
):
    """The proxy's first sweep ran in the app's lifespan, after uvicorn started: its
    failure was uvicorn's traceback, then "the proxy could not start on HOST:PORT",
    blaming the address. Now it is the one line any store failing at start is."""
    folder = tmp_path / "sessions"
    before = SessionStateStore(folder, namespace="sessions")  # before the TTL
    before.put("default", "old", {"v": 1})
    before.close()
    with sqlite3.connect(folder / "cache.db") as db:  # refuses the sweep's write
        db.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON Cache"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    path = tmp_path / "serve.yaml"
    path.write_text(
        json.dumps(
            {
                "upstream": {"type": "openai", "base_url": scripted.url, "model": "scripted"},
                "sessions": {"store": str(folder), "idle_ttl_s": TTL},
            }
        )
    )
    port = ["--port", str(free_port())] if command == "serve" else []
    assert main([command, str(path), *port]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err and "could not start" not in err
    assert str(folder) in err.replace("\n", "") and "database or disk is full" in errors[0]
