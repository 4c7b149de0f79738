"""``ctxproto serve``: an OpenAI-compatible proxy that runs the context pipeline.

A chatbot keeps its OpenAI client and points ``base_url`` here: each request
runs the configured pipeline, is answered from the semantic cache when it can
be, and is otherwise forwarded to the upstream (the bundled runtime, or any
OpenAI-compatible server) and streamed back, with what it saved in headers and
``/metrics``.
"""

from ctxproto.serve.app import create_app
from ctxproto.serve.config import ServeConfig, load_serve_config
from ctxproto.serve.engine_server import OpenAIServer
from ctxproto.serve.envelope import APIError
from ctxproto.serve.flow import ContextFlow
from ctxproto.serve.runner import ServerThread
from ctxproto.serve.state import ProxyState
from ctxproto.serve.upstream import RemoteUpstream, Upstream

__all__ = [
    "APIError",
    "ContextFlow",
    "OpenAIServer",
    "ProxyState",
    "RemoteUpstream",
    "ServeConfig",
    "ServerThread",
    "Upstream",
    "create_app",
    "load_serve_config",
]
