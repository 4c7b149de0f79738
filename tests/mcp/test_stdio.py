"""``ctxproto mcp CONFIG.yaml``: the real client over stdio to a subprocess, and config errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import yaml
from mcp import Client, StdioServerParameters

from tests.mcp.conftest import text_of

REPO = Path(__file__).resolve().parents[2]


def server_parameters(config: Path) -> StdioServerParameters:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return StdioServerParameters(
        command=sys.executable, args=["-m", "ctxproto.cli", "mcp", str(config)], env=env
    )


def test_stdio_server_serves_the_configured_tenant(tmp_path: Path) -> None:
    config = tmp_path / "mcp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "pipeline": {
                    "stages": [{"type": "recency_window", "init_parameters": {"max_turns": 4}}]
                },
                "sessions": {"store": str(tmp_path / "sessions")},
                "mcp": {"tenant": "desk", "output_tokens": 500},
            }
        )
    )

    async def run() -> None:
        async with Client(server_parameters(config)) as client:
            assert len((await client.list_tools()).tools) == 9
            wrote = await client.call_tool(
                "remember", {"session_id": "s1", "text": "Deadline is 2026-12-01."}
            )
            assert not wrote.is_error
            got = await client.call_tool("recall", {"session_id": "s1"})
            assert got.structured_content["entries"][0]["text"] == "Deadline is 2026-12-01."
            bad = await client.call_tool("recall", {"session_id": 7})
            assert bad.is_error
            messages = [{"role": "user", "content": "word " * 2000}]
            capped = await client.call_tool(
                "assemble_context", {"session_id": "s1", "messages": messages}
            )
            assert capped.is_error and "token" in text_of(capped)  # pinned > cap 500

    anyio.run(run)

    from ctxproto.stores.session_state import SessionStateStore

    store = SessionStateStore(tmp_path / "sessions", namespace="sessions")
    assert any(s.startswith("mcp-memory/s1/") for s in store.sessions("desk"))
    store.close()


def test_two_server_processes_on_one_store_lose_no_write(tmp_path: Path) -> None:
    # The reference memory server rewrites one file per change, so two processes
    # sharing it lose writes; here every entry is its own atomic row.
    config = tmp_path / "mcp.yaml"
    config.write_text(yaml.safe_dump({"sessions": {"store": str(tmp_path / "sessions")}}))

    async def writer(name: str) -> None:
        async with Client(server_parameters(config)) as client:
            for i in range(30):
                got = await client.call_tool("remember", {"session_id": "s", "text": f"{name}{i}"})
                assert not got.is_error

    async def run() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(writer, "p")
            group.start_soon(writer, "q")
        async with Client(server_parameters(config)) as client:
            got = await client.call_tool("recall", {"session_id": "s", "max_tokens": 100_000})
            texts = sorted(e["text"] for e in got.structured_content["entries"])
            assert texts == sorted([f"p{i}" for i in range(30)] + [f"q{i}" for i in range(30)])

    anyio.run(run)


def test_invalid_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"mcp": {"tool_output_tokens": {"recall": 0}}}))
    done = subprocess.run(
        [sys.executable, "-m", "ctxproto.cli", "mcp", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert str(config) in done.stderr and "mcp.tool_output_tokens.recall" in done.stderr


def test_the_example_config_is_valid() -> None:
    from ctxproto.serve.config import load_serve_config

    config = load_serve_config(REPO / "examples" / "mcp" / "desktop.yaml")
    assert config.mcp.tenant == "desktop"
    assert config.mcp.cap("recall") == 1500 and config.mcp.cap("compress_text") == 4000
    assert config.pipeline is not None and config.pipeline["budget"]["max_prompt_tokens"] == 4000
