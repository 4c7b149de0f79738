"""``ctxproto bench proxy``'s chat part: the ``bench chat`` workload over HTTP, both ways.

An unmodified OpenAI client sends every session's full history each turn, once
straight to the runtime's own server and once through the proxy (the
``chatbot.yaml`` pipeline) in front of that same server, one turn each in turn
so machine load hits both alike. Each path has its own prefix-cache namespace
(``cache_salt``), so neither warms the other's cache. Effective TPS credits both
with the direct path's tokens (its prompt plus answer tokens); fact retention is
the share of fact questions whose answer was in the prompt the proxy forwarded
(or in the cached answer it replayed).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from ctxproto.serve.protocol import ChatCompletionResponse
from ctxproto.serve.upstream import Upstream, UpstreamStream

__all__ = ["run_chat_through_proxy"]


class _Recorder(Upstream):
    """Forwards to ``inner`` and keeps the last messages sent, to check fact retention."""

    def __init__(self, inner: Upstream) -> None:
        self.inner = inner
        self.model = inner.model
        self.last_messages: list[dict[str, Any]] = []

    async def complete(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> ChatCompletionResponse:
        self.last_messages = body["messages"]
        return await self.inner.complete(body, tenant=tenant, cache_messages=cache_messages)

    async def stream(
        self, body: dict[str, Any], *, tenant: str, cache_messages: int | None = None
    ) -> UpstreamStream:
        self.last_messages = body["messages"]
        return await self.inner.stream(body, tenant=tenant, cache_messages=cache_messages)

    async def ready(self) -> str | None:
        return await self.inner.ready()

    async def aclose(self) -> None:
        await self.inner.aclose()


def run_chat_through_proxy(
    turns: int, sessions: int, max_new_tokens: int, seed: int = 0
) -> dict[str, Any]:
    import openai

    from ctxproto.bench.chat_paths import build_chat_pipeline
    from ctxproto.bench.chat_workload import build_workload, examples_dir
    from ctxproto.runtime import Engine
    from ctxproto.serve import (
        ContextFlow,
        OpenAIServer,
        ProxyState,
        RemoteUpstream,
        ServerThread,
        create_app,
    )
    from ctxproto.tokens import get_counter

    examples = examples_dir()
    system = (examples / "system_prompt.md").read_text(encoding="utf-8")
    scripts = build_workload(sessions, turns, get_counter(), seed=seed)
    seconds = {"direct": 0.0, "proxy": 0.0}
    # Answers are not made one length here (ignore_eos would skip the proxy's cache, as
    # any field shaping an answer does): each path's answer tokens are printed instead.
    answered = {"direct": 0, "proxy": 0}
    logical = hits = 0
    retained: list[bool] = []
    with (
        tempfile.TemporaryDirectory(prefix="ctxproto-bench-") as tmp,
        Engine() as engine,
        OpenAIServer(engine) as upstream,
    ):
        recorder = _Recorder(RemoteUpstream(upstream.url, model="default", timeout=600))
        flow = ContextFlow(build_chat_pipeline(Path(tmp), examples))
        flow.warm_up()
        state = ProxyState(flow=flow, upstream=recorder, models=["ctxproto", "default"])
        with ServerThread(create_app(state)) as proxy:
            clients = {
                "direct": openai.OpenAI(base_url=upstream.url, api_key="-", timeout=600),
                "proxy": openai.OpenAI(base_url=proxy.url, api_key="-", timeout=600),
            }
            for script in scripts:
                histories: dict[str, list[Any]] = {"direct": [], "proxy": []}
                for turn in script.turns:
                    for path, client in clients.items():
                        messages = [
                            {"role": "system", "content": system},
                            *histories[path],
                            {"role": "user", "content": turn.text},
                        ]
                        start = time.perf_counter()
                        raw = client.chat.completions.with_raw_response.create(
                            model="default",
                            messages=messages,
                            max_tokens=max_new_tokens,
                            temperature=0,
                            extra_body={"cache_salt": path},
                            extra_headers={"x-session-id": script.id},
                        )
                        seconds[path] += time.perf_counter() - start
                        answer = raw.parse()
                        text = answer.choices[0].message.content or ""
                        if answer.usage is not None:
                            answered[path] += answer.usage.completion_tokens
                        if path == "direct" and answer.usage is not None:
                            logical += answer.usage.prompt_tokens + answer.usage.completion_tokens
                        if path == "proxy":
                            hit = raw.headers.get("x-ctxproto-cache") == "hit"
                            hits += hit
                            if turn.asks is not None:
                                seen = text if hit else str(recorder.last_messages)
                                retained.append(turn.asks.answer in seen)
                        histories[path] += [
                            {"role": "user", "content": turn.text},
                            {"role": "assistant", "content": text},
                        ]
    served = sum(len(s.turns) for s in scripts)
    return {
        "workload": {"sessions": sessions, "turns": turns, "max_new_tokens": max_new_tokens},
        "direct_seconds": round(seconds["direct"], 3),
        "proxy_seconds": round(seconds["proxy"], 3),
        "logical_tokens": logical,
        "output_tokens_direct": answered["direct"],
        "output_tokens_proxy": answered["proxy"],
        "effective_tps_direct": round(logical / seconds["direct"], 2),
        "effective_tps_proxy": round(logical / seconds["proxy"], 2),
        "effective_tps_ratio": round(seconds["direct"] / seconds["proxy"], 3),
        "semantic_cache_hit_rate": round(hits / served, 4),
        "fact_retention": round(sum(retained) / len(retained), 4) if retained else None,
    }
