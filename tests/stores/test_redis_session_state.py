"""What only the Redis session store has to prove: a server that fails, restarts or hangs."""

from __future__ import annotations

import contextlib
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ctxproto.errors import ConfigError, StoreError, StoreUnavailableError
from ctxproto.stores.redis_connection import RedisConnection
from ctxproto.stores.redis_session_state import UPDATES_TTL_MS, RedisSessionStateStore
from tests.servers_redis import RedisServer, free_port, running_redis


def test_a_server_that_is_down_is_a_quick_store_error_without_the_password():
    url = f"redis://admin:hunter2@127.0.0.1:{free_port()}/0"
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"redis://admin:\*\*\*@127\.0\.0\.1") as raised:
        RedisSessionStateStore(url)
    assert time.monotonic() - start < 5
    assert "hunter2" not in str(raised.value)


def test_a_refused_password_is_reported_without_it(redis_server: RedisServer):
    url = redis_server.url.replace("redis://", "redis://nobody:hunter2@")
    with pytest.raises(StoreError, match=r"redis://nobody:\*\*\*@") as raised:
        RedisSessionStateStore(url)
    assert "hunter2" not in str(raised.value)


def test_an_unencoded_password_is_refused_without_it_and_an_encoded_one_is_sent(
    redis_server: RedisServer,
):
    """`redis://nobody:Zq9/Xw7@…` was "not a usable Redis URL" with the password in it."""
    raw = redis_server.url.replace("redis://", "redis://nobody:Zq9/Xw7@")
    with pytest.raises(ConfigError, match="percent-encoded") as raised:
        RedisSessionStateStore(raw)
    assert "Zq9" not in str(raised.value) and "Xw7" not in str(raised.value)
    encoded = redis_server.url.replace("redis://", "redis://nobody:Zq9%2FXw7@")
    with pytest.raises(StoreError, match=r"redis://nobody:\*\*\*@") as refused:
        RedisSessionStateStore(encoded)  # sent, and refused: the server has no such user
    assert "Zq9" not in str(refused.value) and "Xw7" not in str(refused.value)


def _stored_one(redis_server: RedisServer) -> RedisSessionStateStore:
    """A store that gives up on the server after half a second, holding session ``s``."""
    store = RedisSessionStateStore(
        f"{redis_server.url}?socket_timeout=0.5", namespace=redis_server.namespace()
    )
    store.put("t", "s", {"v": 1})
    return store


@contextlib.contextmanager
def _frozen(redis_server: RedisServer) -> Iterator[None]:
    """The server stopped (SIGSTOP: connections open, nothing answered) for the block."""
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


def test_a_server_that_stops_answering_is_a_store_error_not_a_hang(redis_server: RedisServer):
    store = _stored_one(redis_server)
    with _frozen(redis_server):
        start = time.monotonic()
        with pytest.raises(StoreError, match=r"session 's'.*127\.0\.0\.1"):
            store.get("t", "s")
        assert time.monotonic() - start < 5
    assert store.get("t", "s") == {"v": 1}
    store.close()


def test_a_server_down_or_not_answering_is_unavailable_and_a_refusal_is_not(
    redis_server: RedisServer,
):
    """``StoreUnavailableError`` (the proxy's 503, retried) only where a retry may help:
    a frozen server, a stopped one; a server that answered with a refusal (a key of
    another type, a password it does not take) stays a plain ``StoreError`` (500)."""
    store = _stored_one(redis_server)
    with (
        _frozen(redis_server),
        pytest.raises(StoreUnavailableError, match=r"session 's'.*127\.0\.0\.1"),
    ):
        store.get("t", "s")
    redis_server.stop()
    try:
        with pytest.raises(StoreUnavailableError, match=r"cannot write .*127\.0\.0\.1"):
            store.put("t", "s", {"v": 2})
    finally:
        redis_server.start()
    assert store.get("t", "s") == {"v": 1}
    client = redis.Redis.from_url(redis_server.url)
    client.rpush(store.key("t", "a-list"), b"not a state")
    client.close()
    with pytest.raises(StoreError, match="WRONGTYPE") as refused:
        store.get("t", "a-list")
    assert not isinstance(refused.value, StoreUnavailableError)
    with pytest.raises(StoreError) as refused:
        RedisSessionStateStore(redis_server.url.replace("redis://", "redis://nobody:hunter2@"))
    assert not isinstance(refused.value, StoreUnavailableError)
    store.close()


def _run_script_until_killed(url: str) -> None:
    """A script spinning for a minute of CPU, ended by ``SCRIPT KILL``."""
    client = redis.Redis.from_url(url)
    spin = "local t = os.clock() while os.clock() - t < 60 do end return 1"
    try:
        client.eval(spin, 0)
    except redis.ResponseError:
        pass  # "Script killed by user with SCRIPT KILL"
    finally:
        client.close()


def test_a_busy_or_demoted_server_is_unavailable_not_a_failure(tmp_path: Path):
    """Replies a retry outlives are the proxy's 503, not the 500 of a refusal: ``BUSY``
    (a script running past ``busy-reply-threshold``), ``READONLY`` (a primary demoted
    to a replica in a failover) and ``MASTERDOWN`` (a replica that lost its primary)."""
    with running_redis(tmp_path) as server:
        store = RedisSessionStateStore(server.url, namespace=server.namespace())
        store.put("t", "s", {"v": 1})
        admin = redis.Redis.from_url(server.url)
        admin.config_set("busy-reply-threshold", 50)
        script = threading.Thread(target=_run_script_until_killed, args=(server.url,))
        script.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    admin.ping()
                except redis.ResponseError:
                    break  # BUSY
                time.sleep(0.02)
            with pytest.raises(StoreUnavailableError, match=r"session 's'.*BUSY"):
                store.get("t", "s")
            with pytest.raises(StoreUnavailableError, match=r"cannot write .*BUSY"):
                store.put("t", "s", {"v": 2})  # a transaction: redis-py prefixes the reply
        finally:
            admin.script_kill()
            script.join()
        admin.replicaof("127.0.0.1", free_port())  # a primary that never answers
        with pytest.raises(StoreUnavailableError, match="read only replica"):
            store.put("t", "s", {"v": 2})
        admin.config_set("replica-serve-stale-data", "no")
        with pytest.raises(StoreUnavailableError, match="Link with MASTER is down"):
            store.get("t", "s")
        admin.replicaof("NO", "ONE")
        assert store.get("t", "s") == {"v": 1}
        admin.close()
        store.close()


class _ClusterNodeReplying(socketserver.StreamRequestHandler):
    """A Redis cluster node that answers every key command with ``server.reply``:
    ``CLUSTERDOWN`` while a slot's primary fails over, ``TRYAGAIN`` while a slot moves.
    A real server in a real failover or resharding gives these only for a moment."""

    server: Any

    def handle(self) -> None:
        while header := self.rfile.readline():  # *N, then $len and the bytes, N times
            words = []
            for _ in range(int(header[1:])):
                length = int(self.rfile.readline()[1:])
                words.append(self.rfile.read(length + 2)[:-2].decode().upper())
            if words[0] == "HELLO":  # redis-py asks for RESP3: a map with its version
                answer = b"%1\r\n+proto\r\n:3"
            elif words[0] == "PING":
                answer = b"+PONG"
            elif words[0] in ("CLIENT", "SELECT", "MULTI", "DISCARD"):
                answer = b"+OK"
            elif words[0] == "EXEC":  # a transaction with a refused command is aborted
                answer = b"-EXECABORT Transaction discarded because of previous errors."
            else:
                answer = b"-" + self.server.reply.encode()
            self.wfile.write(answer + b"\r\n")


@pytest.mark.parametrize(
    "reply",
    ["CLUSTERDOWN The cluster is down", "TRYAGAIN Multiple keys request during rehashing of slot"],
    ids=["clusterdown", "tryagain"],
)
def test_a_cluster_failing_over_or_resharding_is_unavailable_not_a_failure(reply: str):
    """They were the 500 ``store_error`` of a refusal, which clients do not retry, for
    replies that a retry a moment later outlives: the 503 ``store_unavailable``."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _ClusterNodeReplying) as node:
        node.daemon_threads = True
        node.reply = reply  # type: ignore[attr-defined]
        threading.Thread(target=node.serve_forever, daemon=True).start()
        store = RedisSessionStateStore(f"redis://127.0.0.1:{node.server_address[1]}/0")
        said = reply.split(maxsplit=1)[1]  # redis-py keeps the text, its class the code
        try:
            with pytest.raises(StoreUnavailableError, match=rf"session 's'.*{said}"):
                store.get("t", "s")
            with pytest.raises(StoreUnavailableError, match=rf"cannot write .*{said}"):
                store.put("t", "s", {"v": 1})  # a transaction: the queued command's reply
        finally:
            store.close()
            node.shutdown()


@pytest.mark.parametrize(
    "reply",
    [
        "CLUSTERDOWN The cluster is down",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "Command # 1 (GET k) of pipeline caused error: TRYAGAIN Multiple keys request",
    ],
    ids=["clusterdown", "tryagain", "masterdown", "pipeline"],
)
def test_a_reply_redis_py_5_has_no_class_for_is_unavailable_too(
    redis_server: RedisServer, reply: str
) -> None:
    """redis-py 5 (``pyproject.toml`` allows it) parses none of these into the classes
    6 has: each is a plain ``ResponseError`` whose text begins with the server's code,
    after the pipeline's prefix for a transaction. They were the 500 ``store_error`` of
    a refusal there, where redis-py 6 made them the 503 a retry outlives."""
    connection = RedisConnection(redis_server.url)
    try:
        with (
            pytest.raises(StoreUnavailableError, match=r"cannot read at redis://"),
            connection.reporting("cannot read"),
        ):
            raise redis.ResponseError(reply)  # as redis-py 5's parser gives the reply
        with (
            pytest.raises(StoreError) as refused,
            connection.reporting("cannot read"),
        ):
            # A refusal naming the code, not beginning with it, stays one.
            raise redis.ResponseError("unknown command 'CLUSTERDOWN', with args beginning with:")
        assert not isinstance(refused.value, StoreUnavailableError)
    finally:
        connection.close()


def test_a_killed_and_restarted_server_loses_nothing_acknowledged(redis_server: RedisServer):
    namespace = redis_server.namespace()
    store = RedisSessionStateStore(redis_server.url, namespace=namespace)
    for i in range(300):
        store.put("tenant", f"s{i}", {"turn": i})
    store.delete("tenant", "s7")
    redis_server.restart(signal.SIGKILL)  # no shutdown save: only the append-only file
    reopened = RedisSessionStateStore(redis_server.url, namespace=namespace)
    assert len(reopened.sessions("tenant")) == 299
    assert reopened.get("tenant", "s299") == {"turn": 299}
    assert reopened.get("tenant", "s7") is None
    # The first store's pool reconnects by itself after the restart.
    assert store.get("tenant", "s0") == {"turn": 0}
    store.close()
    reopened.close()


WRITER = """
import sys
from ctxproto.stores.redis_session_state import UPDATES_TTL_MS, RedisSessionStateStore

store = RedisSessionStateStore(sys.argv[1], namespace=sys.argv[2])
turn = 0
while True:
    turn += 1
    store.put("tenant", "s", {"turn": turn, "history": ["turn %d" % turn] * (turn % 40 + 1)})
    print(turn, flush=True)
"""


def test_a_writer_killed_mid_write_leaves_whole_acknowledged_state(
    redis_server: RedisServer,
):
    namespace = redis_server.namespace()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, redis_server.url, namespace],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    acknowledged = 0
    while acknowledged < 200:
        acknowledged = int(writer.stdout.readline())
    writer.kill()
    writer.wait()
    writer.stdout.close()
    store = RedisSessionStateStore(redis_server.url, namespace=namespace)
    state = store.get("tenant", "s")
    assert state is not None and state["turn"] >= acknowledged
    assert state["history"] == [f"turn {state['turn']}"] * (state["turn"] % 40 + 1)
    store.close()


def test_an_update_whose_exec_reply_is_lost_is_applied_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: when the connection dropped after the server ran an update's
    ``EXEC`` but before its reply arrived, redis-py turned the error into a
    ``WatchError`` (the key was watched) and ``transaction()`` ran the update again
    on the state that already held it: the turn was appended twice."""
    namespace = redis_server.namespace()
    store = RedisSessionStateStore(redis_server.url, namespace=namespace)
    store.put("t", "s", {"turns": ["hello"]})
    parse: Any = redis.client.Pipeline.parse_response
    lost: list[object] = []

    def losing_the_exec_reply(self: Any, connection: Any, command: Any, **options: Any) -> Any:
        reply = parse(self, connection, command, **options)
        if command == "_" and isinstance(reply, list) and not lost:  # EXEC's, once
            lost.append(reply)
            raise redis.ConnectionError("Connection closed by server.")
        return reply

    monkeypatch.setattr(redis.client.Pipeline, "parse_response", losing_the_exec_reply)
    new = store.update("t", "s", lambda state: {"turns": [*(state or {})["turns"], "hi"]})
    assert lost, "the reply was never lost: the test no longer reaches the retry"
    assert new == store.get("t", "s") == {"turns": ["hello", "hi"]}
    monkeypatch.undo()
    assert store.update("t", "s", lambda state: {"turns": ["again"]}) == {"turns": ["again"]}
    assert store.delete("t", "s")
    client = redis.Redis.from_url(redis_server.url)
    assert list(client.scan_iter(match=f"ctxproto:{namespace}:*")) == []  # nothing left
    client.close()
    store.close()


def test_the_list_of_recent_updates_expires_and_the_state_stays(
    redis_server: RedisServer,
) -> None:
    """Regression: the list of a session's recent update tokens had no expiry, so
    about a kilobyte per session that was ever updated stayed on the server for
    ever, and ``maxmemory-policy volatile-ttl`` could not evict it. It is only
    read by a retry, which comes within a second."""
    namespace = redis_server.namespace()
    store = RedisSessionStateStore(redis_server.url, namespace=namespace)
    client = redis.Redis.from_url(redis_server.url)
    for turn in range(2):
        store.update("t", "s", lambda state: {"turns": [*(state or {}).get("turns", []), "hi"]})
        ttl = client.pttl(f"ctxproto:{namespace}:updates:t:s")
        assert 0 < ttl <= UPDATES_TTL_MS, (turn, ttl)
    assert client.pttl(store.key("t", "s")) == -1  # the state itself never expires
    assert store.get("t", "s") == {"turns": ["hi", "hi"]}
    client.close()
    store.close()
