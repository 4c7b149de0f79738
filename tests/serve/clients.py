"""OpenAI clients for the proxy tests, each closed when its test ends.

``conftest.py`` closes every client made here after each test (a stream a
test reads later needs its client until then). A client left open keeps its
pooled connection's socket, and once collected (an exception's traceback
often holds it in a reference cycle, so it waits for the garbage collector)
its ResourceWarning fails whichever test happens to collect garbage then.
"""

from __future__ import annotations

import openai

from ctxproto.serve import ServerThread

_opened: list[openai.OpenAI] = []


def openai_client(server: ServerThread, key: str) -> openai.OpenAI:
    """A client of ``server`` with tenant key ``key`` that does not retry."""
    client = openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)
    _opened.append(client)
    return client


def close_clients() -> None:
    while _opened:
        _opened.pop().close()
