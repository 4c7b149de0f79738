"""ctxproto over MCP: assemble, compress, remember, recall, forget, search and cache as tools.

``ctxproto mcp CONFIG.yaml`` serves it over stdio; ``ctxproto serve`` mounts it
at ``/mcp`` (streamable HTTP) when the ``mcp`` extra is installed. Needs the
MCP Python SDK: ``pip install 'ctxproto[mcp]'``.
"""

from ctxproto.mcp.http import McpEndpoint, mcp_endpoint
from ctxproto.mcp.memory import SessionMemory
from ctxproto.mcp.server import McpRuntime, create_mcp_server
from ctxproto.mcp.service import ContextService

__all__ = [
    "ContextService",
    "McpEndpoint",
    "McpRuntime",
    "SessionMemory",
    "create_mcp_server",
    "mcp_endpoint",
]
