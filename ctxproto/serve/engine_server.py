"""The bundled engine's OpenAI-compatible HTTP server: the serve app over the local engine.

There is one HTTP stack in ctxproto: ``OpenAIServer`` is ``ctxproto.serve``'s
ASGI app with no pipeline and the engine as its upstream, on uvicorn in a
background thread. So the runtime gets the proxy's request hardening for free:
bodies are bounded in size and time (chunked ones too), only JSON is accepted,
every field is validated before the engine sees the request, prompts that
cannot fit are refused before tokenizing, and a client that disconnects,
streaming or not, stops the decoding of its answer.
"""

from __future__ import annotations

from ctxproto.runtime.engine import Engine
from ctxproto.serve.app import create_app
from ctxproto.serve.config import LimitsConfig
from ctxproto.serve.flow import ContextFlow
from ctxproto.serve.local_upstream import LocalUpstream
from ctxproto.serve.runner import ServerThread
from ctxproto.serve.state import ProxyState

__all__ = ["OpenAIServer"]


class OpenAIServer(ServerThread):
    """Serves ``engine`` on ``host:port`` (port 0 picks a free one) from a daemon thread.

    ``url`` is the API root (``http://HOST:PORT/v1``); use it as a context manager
    or call ``start()`` and ``close()``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "default",
        limits: LimitsConfig | None = None,
    ) -> None:
        self.engine = engine
        self.model = model
        self.state = ProxyState(
            flow=ContextFlow(None),
            upstream=LocalUpstream(engine, model=model),
            models=[model],
            limits=limits or LimitsConfig(),
        )
        super().__init__(create_app(self.state, mcp_server=False), host=host, port=port)

    def __enter__(self) -> OpenAIServer:
        self.start()
        return self
