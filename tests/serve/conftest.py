"""Servers for the proxy tests, each started once per test session on a free port.

- ``scripted``: a tiny scripted upstream (``scripted_upstream.py``);
- ``proxy``: the proxy over it, with a semantic cache, a summarizer and a
  recency window, two tenants (keys ``key-a``, ``key-b``) and a third limited to
  one request at a time (``key-c``), and an admin key (``key-ops``);
- ``engine`` / ``runtime_server`` / ``local_proxy``: the bundled runtime, its own
  OpenAI-compatible server, and a proxy with the runtime in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctxproto.budget import Budget
from ctxproto.pipeline import Pipeline
from ctxproto.serve import ContextFlow, ProxyState, RemoteUpstream, ServerThread, create_app
from ctxproto.serve.config import TenantConfig
from ctxproto.serve.tenancy import Tenants
from ctxproto.stages.recency_window import RecencyWindow
from ctxproto.stages.semantic_cache import SemanticCacheLookup
from ctxproto.stages.summarizer import Summarizer
from ctxproto.stores.session_state import SessionStateStore
from tests.serve.clients import close_clients
from tests.serve.scripted_upstream import ScriptedUpstream

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b", "key-c": "tenant-c", "key-ops": "ops"}


@pytest.fixture(autouse=True)
def clients_closed() -> Iterator[None]:
    """Every client ``clients.openai_client`` made during the test, closed after it."""
    yield
    close_clients()


@pytest.fixture(scope="session")
def scripted() -> Iterator[Any]:
    upstream = ScriptedUpstream()
    with ServerThread(upstream.app) as server:
        upstream.url = server.url  # type: ignore[attr-defined]
        yield upstream


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-state")


@pytest.fixture(scope="session")
def proxy_state(scripted: Any, state_dir: Path, embedder: Any) -> ProxyState:
    pipeline = Pipeline(
        [
            SemanticCacheLookup(path=str(state_dir / "answers"), scope="conversation"),
            Summarizer(
                keep_turns=2,
                checkpoint_every=2,
                model=None,
                max_summary_tokens=120,
                state_path=str(state_dir / "summaries"),
            ),
            RecencyWindow(max_tokens=400),
        ],
        Budget(max_prompt_tokens=1500),
    )
    tenants = {
        key: TenantConfig(
            id=tenant,
            key=key,
            max_concurrent_requests=1 if key == "key-c" else None,
            admin=key == "key-ops",
        )
        for key, tenant in KEYS.items()
    }
    flow = ContextFlow(pipeline, store=SessionStateStore(state_dir / "sessions"))
    flow.warm_up()
    return ProxyState(
        flow=flow,
        upstream=RemoteUpstream(scripted.url, model="scripted", retries=2, cache_salt=True),
        tenants=Tenants(tenants),
        models=["ctxproto", "scripted"],
    )


@pytest.fixture(scope="session")
def proxy(proxy_state: ProxyState) -> Iterator[ServerThread]:
    with ServerThread(create_app(proxy_state)) as server:
        yield server


@pytest.fixture(scope="session")
def engine(lm: Any) -> Iterator[Any]:
    from ctxproto.runtime import Engine

    with Engine() as running:
        yield running


@pytest.fixture(scope="session")
def runtime_server(engine: Any) -> Iterator[Any]:
    from ctxproto.serve import OpenAIServer

    with OpenAIServer(engine) as server:
        yield server


@pytest.fixture(scope="session")
def local_proxy(engine: Any) -> Iterator[ServerThread]:
    from ctxproto.serve.local_upstream import LocalUpstream

    state = ProxyState(
        flow=ContextFlow(Pipeline([RecencyWindow(max_tokens=400)], Budget(max_prompt_tokens=1500))),
        upstream=LocalUpstream(engine, model="default"),
        models=["ctxproto", "default"],
    )
    with ServerThread(create_app(state)) as server:
        yield server


@pytest.fixture(scope="session")
def remote_runtime_proxy(runtime_server: Any) -> Iterator[ServerThread]:
    """The proxy forwarding to the runtime's own server: the remote path, end to end."""
    state = ProxyState(
        flow=ContextFlow(Pipeline([RecencyWindow(max_tokens=400)], Budget(max_prompt_tokens=1500))),
        upstream=RemoteUpstream(runtime_server.url, model="default"),
        models=["ctxproto", "default"],
    )
    with ServerThread(create_app(state)) as server:
        yield server
