"""The MCP server over real components: a recency-window pipeline, a session store,
a knowledge base and a semantic cache in temporary folders, built once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.types import TextContent

from ctxproto.documents import Document
from ctxproto.mcp import ContextService
from ctxproto.pipeline import Pipeline
from ctxproto.retrieval.knowledge_base import KnowledgeBase
from ctxproto.serve.config import McpConfig
from ctxproto.serve.flow import ContextFlow
from ctxproto.stages.recency_window import RecencyWindow
from ctxproto.stores.session_state import SessionStateStore

KNOWLEDGE = {
    "default": [
        ("billing", "Invoices are issued on the 3rd of each month; refunds take 5 days."),
        ("deploy", "Deploy with `make release` from branch main; the build id is B-7781."),
        ("oncall", "The on-call rotation changes every Monday at 09:00 UTC."),
    ],
    "tenant-a": [("secret-a", "Tenant A's launch code name is Bluefin, shipping in Q3.")],
}


def build_knowledge(root: Path, embedder: Any) -> str:
    """One store per tenant under ``root``; the config names them ``root/{tenant}``."""
    for tenant, docs in KNOWLEDGE.items():
        knowledge = KnowledgeBase(root / tenant, embedder=embedder)
        knowledge.add_documents(Document(id=i, text=t, source=i) for i, t in docs)
        knowledge.save()
    return str(root / "{tenant}")


@pytest.fixture(scope="module")
def mcp_folder(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Path:
    root = tmp_path_factory.mktemp("mcp")
    build_knowledge(root / "knowledge", embedder)
    return root


def make_service(folder: Path, **config: Any) -> ContextService:
    flow = ContextFlow(
        Pipeline([RecencyWindow(max_turns=2)]), store=SessionStateStore(folder / "sessions")
    )
    settings = McpConfig(
        knowledge=str(folder / "knowledge" / "{tenant}"), cache=str(folder / "cache"), **config
    )
    return ContextService(flow, settings)


@pytest.fixture(scope="module")
def service(mcp_folder: Path) -> Iterator[ContextService]:
    service = make_service(mcp_folder, tool_output_tokens={"recall": 200}, page_size=25)
    yield service
    service.close()


def text_of(result: Any) -> str:
    """The text of a tool result's first content block (where a tool error says why)."""
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text
