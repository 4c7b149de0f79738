"""``ctxproto mcp CONFIG.yaml``: the MCP server over stdio, for Claude Desktop and IDE agents.

The config is a serve config (pipeline, sessions, and an ``mcp:`` section for
caps, the stdio tenant, the knowledge store and the semantic cache); its
upstream is not used, since the calling agent has its own model. Over HTTP the
same server is at ``/mcp`` inside ``ctxproto serve``.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mcp",
        help="serve the context tools to an MCP client over stdio",
        description="Serve CONFIG (a serve YAML: pipeline, sessions, mcp) as an MCP server "
        "on stdin/stdout: assemble_context, compress_text, remember, recall, "
        "search_knowledge, cached_answer, store_answer and context_stats.",
    )
    parser.add_argument("config", help="serve config file (YAML)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ctxproto._extras import require

    require("mcp.server.mcpserver", extra="mcp")
    import anyio

    from ctxproto.mcp import ContextService, create_mcp_server
    from ctxproto.serve.config import load_serve_config
    from ctxproto.serve.flow import ContextFlow
    from ctxproto.serve.session_sweeper import SessionSweeper

    config = load_serve_config(args.config)
    flow = ContextFlow.from_config(config, source=args.config)
    flow.warm_up()
    service = ContextService(flow, config.mcp)
    service.warm_up()  # a cache that cannot open fails now, not at the first tool call
    # sessions idle past sessions.idle_ttl_s, a summarizer's state_idle_ttl_s
    sweeper = SessionSweeper([])
    try:
        sweeper = SessionSweeper(flow.session_stores() + service.session_stores())
        sweeper.sweep()
        sweeper.start()
        anyio.run(create_mcp_server(service).run_stdio_async)
    finally:
        sweeper.stop()
        service.close()
    return 0
