# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""Two ``ctxproto serve`` processes on one Redis and one PostgreSQL, as deployed.

Each replica is a real ``python -m ctxproto.cli serve CONFIG`` process on a free
127.0.0.1 port, started once for this module and stopped by its PID. Their
sessions, summaries and semantic cache are on the test session's valkey
server, their retrieval store on its PostgreSQL, and their upstream is the
scripted one (``scripted_upstream.py``), so no language model is loaded.
The restart test restarts both servers under the running replicas, and the
last test kills one replica; a parallel run may hand a worker this module's
tests out of file order, so a replica found dead before a test is started again.

A source is invalidated through one replica's ``POST /v1/ctxproto/invalidate``
(the tenant's key is an admin key), as an indexing job would after changing a
document; the other replica's next lookup must not serve what was built on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from ctxproto.bench.embedded_postgres import EmbeddedPostgres
from ctxproto.documents import Document
from ctxproto.retrieval import KnowledgeBase
from ctxproto.stores import open_session_store
from tests.serve.replicated_config import replicated_config
from tests.servers_redis import RedisServer, free_port

pytestmark = pytest.mark.models

ROOT = Path(__file__).resolve().parents[2]
KEY = "key-replicas"
START_SECONDS = 300


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=KEY, max_retries=0)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


@dataclass
class Deployment:
    replicas: list[Replica]
    redis: str
    tenant: str
    cache: str
    """The semantic cache's location: the Redis URL and the cache's name."""
    config: Path


def _start(config: Path, log: Path) -> Replica:
    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "ctxproto.cli", "serve", str(config), "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    return Replica(process, port, log)


def _wait_ready(replica: Replica, deadline: float) -> None:
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            pytest.fail(f"a replica exited at start:\n{replica.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{replica.base_url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"a replica did not become ready:\n{replica.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def deployment(
    redis_server: RedisServer,
    postgres: EmbeddedPostgres,
    scripted: Any,
    embedder: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("replicas")
    knowledge = f"{postgres.url}?table=t_{uuid.uuid4().hex[:12]}"
    base = KnowledgeBase(knowledge, embedder=embedder)
    base.add_documents(
        [
            Document(
                id="hours",
                text="The Oslo shop opens at nine and closes at five.",
                source="hours.md",
            ),
            Document(
                id="returns", text="Returns are accepted within 30 days.", source="returns.md"
            ),
        ]
    )
    base.save()
    tenant = redis_server.namespace()  # a tenant no other test has on the shared server
    cache = f"{redis_server.url}#{tenant}"
    config = folder / "proxy.yaml"
    settings = replicated_config(
        redis_server.url,
        cache=cache,
        upstream=scripted.url,
        tenant={"id": tenant, "key": KEY, "admin": True},
        scope="documents",
        knowledge=knowledge,
    )
    config.write_text(yaml.safe_dump(settings))
    replicas = [_start(config, folder / f"replica-{n}.log") for n in range(2)]
    try:
        deadline = time.monotonic() + START_SECONDS
        for replica in replicas:
            _wait_ready(replica, deadline)
        yield Deployment(replicas, redis_server.url, tenant, cache, config)
    finally:
        for replica in replicas:  # the list the tests restart replicas in
            replica.stop()


@pytest.fixture(autouse=True)
def _replicas_alive(deployment: Deployment) -> None:
    """A replica the kill test left dead is started again, should a test follow it."""
    for index, replica in enumerate(deployment.replicas):
        if replica.process.poll() is not None:
            log = replica.log.with_name(f"{replica.log.stem}-again.log")
            deployment.replicas[index] = _start(deployment.config, log)
            _wait_ready(deployment.replicas[index], time.monotonic() + START_SECONDS)


def _say(
    replica: Replica, session: str, text: str, *, pipeline: bool = True, cache: bool = False
) -> Any:
    headers = {"x-session-id": session}
    if not cache:
        headers["x-ctxproto-cache"] = "bypass"
    if not pipeline:
        headers["x-ctxproto-pipeline"] = "off"
    with replica.client() as client:
        return client.chat.completions.with_raw_response.create(
            model="ctxproto", messages=[{"role": "user", "content": text}], extra_headers=headers
        )


def _alternate(deployment: Deployment, session: str, texts: list[str]) -> list[tuple[str, str]]:
    """Send ``texts`` as turns of ``session``, alternating replicas, pipeline off; the
    acknowledged conversation as (role, content) pairs."""
    acknowledged = []
    for turn, text in enumerate(texts):
        reply = _say(deployment.replicas[turn % 2], session, text, pipeline=False)
        acknowledged += [("user", text), ("assistant", reply.parse().choices[0].message.content)]
    return acknowledged


def _forwarded(scripted: Any) -> list[tuple[str, str]]:
    """The conversation the upstream was last sent, as (role, content) pairs."""
    return [(m["role"], m["content"]) for m in scripted.bodies[-1]["messages"]]


def test_a_conversation_alternating_between_processes_keeps_history_and_summary(
    deployment: Deployment, scripted: Any
) -> None:
    replicas = deployment.replicas
    expected: list[tuple[str, str]] = []
    for turn in range(6):
        reply = _say(replicas[turn % 2], "alternating", f"turn {turn}").parse()
        expected += [("user", f"turn {turn}"), ("assistant", reply.choices[0].message.content)]
    # The summary that one replica folded is the one the other resumed from.
    summaries = open_session_store(deployment.redis, namespace="summaries")
    state = summaries.get(deployment.tenant, "alternating")
    summaries.close()
    assert state is not None and state["folded"] == 8
    assert "turn 0" in state["summary"] and "turn 3" in state["summary"]
    # Either replica forwards the whole stored conversation, whichever answered each turn.
    assert _stored(deployment, "alternating") == expected
    for replica in replicas:
        before = _stored(deployment, "alternating")
        _say(replica, "alternating", "anything else?", pipeline=False)
        assert _forwarded(scripted) == [*before, ("user", "anything else?")]


def _stored(deployment: Deployment, session: str) -> list[tuple[str, str]]:
    store = open_session_store(deployment.redis, namespace="sessions")
    state = store.get(deployment.tenant, f"proxy:{session}") or {"messages": []}
    store.close()
    return [(m["role"], m["content"]) for m in state["messages"]]


def test_an_answer_cached_through_one_process_is_a_hit_on_the_other_until_invalidated(
    deployment: Deployment, scripted: Any
) -> None:
    first, second = deployment.replicas
    question = "When does the Oslo shop open?"
    answered = _say(first, "cache-a", question, cache=True)
    asked = len(scripted.bodies)
    again = _say(second, "cache-b", question, cache=True)
    assert answered.headers["x-ctxproto-cache"] == "miss"
    assert again.headers["x-ctxproto-cache"] == "hit"
    assert again.parse().choices[0].message.content == answered.parse().choices[0].message.content
    assert len(scripted.bodies) == asked  # the upstream was not asked again
    # The shop's hours change: the indexing job invalidates, through the first replica,
    # what was built on them.
    dropped = httpx.post(
        f"{first.base_url}/v1/ctxproto/invalidate",
        json={"source": "hours.md"},
        headers={"authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert dropped.status_code == 200, dropped.text
    assert dropped.json()["dropped"] >= 1
    after = _say(second, "cache-c", question, cache=True)
    assert after.headers["x-ctxproto-cache"] == "miss"
    assert len(scripted.bodies) == asked + 1
    assert _say(first, "cache-d", question, cache=True).headers["x-ctxproto-cache"] == "hit"


def test_concurrent_conversations_through_both_processes_lose_no_turn(
    deployment: Deployment,
) -> None:
    """Eight clients, each its own session, send 25 turns alternating replicas: 200 writes
    from two processes at once, and every session ends with all of its turns, in order."""
    sessions, turns = 8, 25

    def converse(client: int) -> None:
        for turn in range(turns):
            replica = deployment.replicas[(client + turn) % 2]
            _say(replica, f"busy-{client}", f"client {client} turn {turn}", pipeline=False)

    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(converse, range(sessions)))
    for client in range(sessions):
        stored = _stored(deployment, f"busy-{client}")
        assert [text for role, text in stored if role == "user"] == [
            f"client {client} turn {turn}" for turn in range(turns)
        ]
        assert [role for role, _ in stored] == ["user", "assistant"] * turns


def test_restarted_servers_lose_nothing_acknowledged(
    deployment: Deployment, redis_server: RedisServer, postgres: EmbeddedPostgres, scripted: Any
) -> None:
    """Redis killed (only its append-only file is left) and PostgreSQL crashed, under
    running replicas: history and cached answers are all there once they reconnect."""
    first, second = deployment.replicas
    acknowledged = _alternate(deployment, "durable", [f"durable {turn}" for turn in range(3)])
    question = "How long do I have to return an order?"
    assert _say(first, "durable-cache", question, cache=True).headers["x-ctxproto-cache"] == "miss"
    redis_server.restart(signal.SIGKILL)
    postgres.crash()
    postgres.start()
    for replica in deployment.replicas:
        _wait_ready(replica, time.monotonic() + 60)  # the pools reconnect by themselves
    assert _stored(deployment, "durable") == acknowledged
    _say(second, "durable", "after the restart", pipeline=False)
    assert _forwarded(scripted) == [*acknowledged, ("user", "after the restart")]
    hit = _say(second, "durable-cache-b", question, cache=True)  # retrieval and cache both
    assert hit.headers["x-ctxproto-cache"] == "hit"


def test_a_replica_killed_mid_turn_loses_no_acknowledged_turn(
    deployment: Deployment, scripted: Any
) -> None:
    """It leaves one replica dead (started again should a test follow)."""
    first, second = deployment.replicas
    acknowledged = _alternate(deployment, "killed", [f"fact {turn}" for turn in range(4)])
    with first.client() as client:
        stream = client.chat.completions.create(
            model="ctxproto",
            messages=[{"role": "user", "content": "SLOW 0.5"}],
            extra_headers={"x-session-id": "killed", "x-ctxproto-pipeline": "off"},
            stream=True,
        )
        next(iter(stream))  # the upstream is answering: the turn is under way
        first.stop(signal.SIGKILL)
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            list(stream)
    assert _stored(deployment, "killed") == acknowledged
    _say(second, "killed", "still there?", pipeline=False)
    assert _forwarded(scripted) == [*acknowledged, ("user", "still there?")]
    assert httpx.get(f"{second.base_url}/health", timeout=10).status_code == 200
