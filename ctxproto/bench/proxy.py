"""``ctxproto bench proxy``: what the proxy adds per request, and how fast it answers hits.

- **Overhead.** The same requests (a 12-turn support chat) sent straight to an
  upstream and through the proxy; the difference of the per-request p50 and p95
  is the proxy's cost: HTTP hop, validation, the pipeline, the headers. The
  upstream is a fixed-answer server in this process, so no model time blurs the
  figure. Measured for a model-free pipeline (a recency window) and for
  ``examples/pipelines/chatbot.yaml`` (retrieval, semantic cache, summary).
- **Cache-hit throughput.** Concurrent clients asking a question the semantic
  cache holds: answered requests per second, the upstream never called. The
  clients run in a process of their own (``proxy_load.py``), as real ones do.
- **Chat workload** (``proxy_chat.py``): ``bench chat``'s sessions sent by an
  OpenAI client through the proxy versus straight to the same upstream.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ctxproto.bench.machine import print_figures
from ctxproto.bench.timing import call_times_ms
from ctxproto.budget import Budget
from ctxproto.cli.arguments import int_at_least, positive_float
from ctxproto.pipeline import Pipeline

__all__ = ["register", "run"]

ANSWER = "You can return it within 30 days with the receipt."


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy", help="the proxy's added latency and its cache-hit throughput"
    )
    parser.add_argument(
        "--requests", type=int_at_least(1), default=200, help="timed requests per path"
    )
    parser.add_argument(
        "--clients", type=int_at_least(1), default=16, help="concurrent cache-hit clients"
    )
    parser.add_argument("--seconds", type=positive_float, default=5.0, help="cache-hit run length")
    parser.add_argument("--skip-chatbot", action="store_true", help="no chatbot.yaml overhead")
    parser.add_argument(
        "--chat-turns",
        type=int_at_least(0),
        default=10,
        help="turns of the chat workload (0: skip it)",
    )
    parser.add_argument(
        "--chat-sessions", type=int_at_least(1), default=1, help="sessions of the chat workload"
    )
    parser.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=32, help="tokens per answer at most"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    result = run(
        requests=args.requests,
        clients=args.clients,
        seconds=args.seconds,
        chatbot=not args.skip_chatbot,
    )
    if args.chat_turns > 0:
        from ctxproto.bench.proxy_chat import run_chat_through_proxy

        result["chat"] = run_chat_through_proxy(
            args.chat_turns, args.chat_sessions, args.max_new_tokens
        )
    return print_figures(result, as_json=args.json)


def run(*, requests: int, clients: int, seconds: float, chatbot: bool = True) -> dict[str, Any]:
    from ctxproto.bench.chat_paths import build_chat_pipeline
    from ctxproto.bench.chat_workload import examples_dir
    from ctxproto.serve import ServerThread
    from ctxproto.stages.recency_window import RecencyWindow

    result: dict[str, Any] = {"requests": requests}
    with ServerThread(_fixed_upstream()) as upstream, tempfile.TemporaryDirectory() as work:
        window = Pipeline([RecencyWindow(max_tokens=500)], Budget(max_prompt_tokens=1500))
        result["overhead_recency_window"] = _overhead(upstream.url, window, requests)
        if chatbot:
            pipeline = build_chat_pipeline(Path(work) / "chatbot", examples_dir())
            result["overhead_chatbot"] = _overhead(upstream.url, pipeline, max(requests // 4, 20))
        result["cache_hits"] = _cache_hits(upstream.url, Path(work) / "answers", clients, seconds)
    return result


def _chat() -> list[dict[str, str]]:
    turns = [
        "Hi, I bought a Lumen bulb last week.",
        "It flickers when dimmed below 20 percent.",
        "I already tried another dimmer switch.",
        "The order number is 88123.",
        "Can I return it?",
        "How long do refunds take?",
    ]
    messages = [
        {"role": "system", "content": "You are the support assistant of a smart-home shop."}
    ]
    for turn in turns:
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": ANSWER}]
    return [*messages, {"role": "user", "content": "What is the return window?"}]


def _overhead(upstream_url: str, pipeline: Pipeline, requests: int) -> dict[str, float]:
    import httpx

    from ctxproto.serve import ContextFlow, ProxyState, RemoteUpstream, ServerThread, create_app

    flow = ContextFlow(pipeline)
    flow.warm_up()
    state = ProxyState(flow=flow, upstream=RemoteUpstream(upstream_url, model="fixed"))
    body = {"model": "ctxproto", "messages": _chat(), "max_tokens": 32}
    headers = {"x-ctxproto-cache": "bypass", "x-session-id": "bench"}
    with ServerThread(create_app(state)) as proxy, httpx.Client(timeout=60) as client:

        def post_to(url: str) -> Callable[[Any], Any]:
            return lambda _: client.post(f"{url}/chat/completions", json=body, headers=headers)

        items = list(range(requests))
        # Interleave the paths in rounds so drifting machine load hits both alike.
        direct, proxied = [], []
        for start in range(0, requests, 20):
            chunk = items[start : start + 20]
            direct.append(call_times_ms(post_to(upstream_url), chunk, warm_up=2))
            proxied.append(call_times_ms(post_to(proxy.url), chunk, warm_up=2))
    straight, through = np.concatenate(direct), np.concatenate(proxied)
    return {
        "direct_p50_ms": round(float(np.percentile(straight, 50)), 2),
        "proxy_p50_ms": round(float(np.percentile(through, 50)), 2),
        "added_p50_ms": round(float(np.percentile(through, 50) - np.percentile(straight, 50)), 2),
        "added_p95_ms": round(float(np.percentile(through, 95) - np.percentile(straight, 95)), 2),
    }


def _cache_hits(upstream_url: str, path: Path, clients: int, seconds: float) -> dict[str, float]:
    import httpx

    from ctxproto.bench.proxy_load import post_concurrently
    from ctxproto.serve import ContextFlow, ProxyState, RemoteUpstream, ServerThread, create_app
    from ctxproto.stages.semantic_cache import SemanticCacheLookup

    pipeline = Pipeline([SemanticCacheLookup(path=str(path), scope="query")])
    flow = ContextFlow(pipeline)
    flow.warm_up()
    state = ProxyState(flow=flow, upstream=RemoteUpstream(upstream_url, model="fixed"))
    body = {"model": "ctxproto", "messages": [{"role": "user", "content": "Can I return a bulb?"}]}
    with ServerThread(create_app(state)) as proxy:
        url = f"{proxy.url}/chat/completions"
        httpx.post(url, json=body, timeout=60)  # the miss that fills the cache
        load = post_concurrently(url, body, clients, seconds)
    return {
        "clients": clients,
        "answered_per_s": round(load.per_second, 1),
        "hit_share": round(load.hits / max(load.answered, 1), 3),
    }


def _fixed_upstream() -> Any:
    """An OpenAI-compatible server that answers every request at once with ``ANSWER``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ctxproto.serve.protocol import (
        ChatCompletionResponse,
        Choice,
        ResponseMessage,
        Usage,
    )

    async def chat(request: Request) -> JSONResponse:
        await request.body()
        answer = ChatCompletionResponse(
            model="fixed",
            choices=[Choice(message=ResponseMessage(content=ANSWER))],
            usage=Usage.of(100, 12),
        )
        return JSONResponse(answer.model_dump())

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "fixed", "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
