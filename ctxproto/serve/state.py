"""What every request of one proxy shares: flow, upstream, tenants, limits and metrics.

Built once (``ProxyState.from_config``) and handed to ``create_app``; other
surfaces mounted in the same process take the same object, so they share the
pipeline, its stores and the upstream rather than building their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ctxproto.errors import ConfigError
from ctxproto.serve.config import LimitsConfig, LocalUpstreamConfig, McpConfig, ServeConfig
from ctxproto.serve.flow import ContextFlow, Turn
from ctxproto.serve.metrics import ProxyMetrics
from ctxproto.serve.protocol import Usage
from ctxproto.serve.shutdown import ShutdownCutoff
from ctxproto.serve.tenancy import Tenants
from ctxproto.serve.upstream import RemoteUpstream, Upstream
from ctxproto.tokens import TokenCounter, get_counter

__all__ = ["ProxyState"]


@dataclass
class ProxyState:
    """The shared state of one proxy app."""

    flow: ContextFlow
    upstream: Upstream
    tenants: Tenants = field(default_factory=lambda: Tenants({}))
    models: list[str] = field(default_factory=lambda: ["ctxproto"])
    """Model names clients may ask for; the first is the one answers name."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    session_mode: Literal["stateless", "stateful"] = "stateless"
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    mcp: McpConfig = field(default_factory=McpConfig)
    """The caps and stores of the MCP endpoint mounted at ``/mcp``."""
    cutoff: ShutdownCutoff = field(default_factory=ShutdownCutoff)
    """Ends the requests still running once a stopping server's grace is over."""
    _counter: TokenCounter | None = None

    @classmethod
    def from_config(cls, config: ServeConfig, *, source: str | None = None) -> ProxyState:
        """Build the pipeline, the stores and the upstream a config describes."""
        flow = ContextFlow.from_config(config, source=source)
        tenants = Tenants(config.tenant_keys(source))
        try:
            upstream = _build_upstream(config)
        except ConfigError as exc:
            raise ConfigError(exc.detail, file=source, key=exc.key, expected=exc.expected) from None
        models = list(dict.fromkeys([config.served_model, upstream.model]))
        return cls(
            flow=flow,
            upstream=upstream,
            tenants=tenants,
            models=models,
            limits=config.limits,
            session_mode=config.sessions.mode,
            mcp=config.mcp,
        )

    def record(self, turn: Turn, usage: Usage) -> None:
        """Count one answered chat request in the metrics."""
        m = self.metrics
        m.requests.labels(route="chat_completions", tenant=turn.tenant, cache=turn.cache).inc()
        if turn.cache == "hit":
            m.cache_hits.inc()
        m.tokens_original.inc(turn.original_tokens)
        m.tokens_sent.inc(turn.prompt_tokens)
        m.tokens_saved.inc(turn.saved_tokens)
        if usage.prompt_tokens_details is not None:
            m.cached_prefix_tokens.inc(usage.prompt_tokens_details.cached_tokens)

    def count_messages(self, messages: list[dict[str, Any]]) -> int:
        """Tokens of messages the pipeline did not see, with the pipeline's counter."""
        if self._counter is None:
            self._counter = self.flow.counter or get_counter()
        return sum(self._counter.count(_text(m)) for m in messages)

    async def aclose(self) -> None:
        await self.upstream.aclose()


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    text = content if isinstance(content, str) else ""
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"])
    return text


def _build_upstream(config: ServeConfig) -> Upstream:
    spec = config.upstream
    if isinstance(spec, LocalUpstreamConfig):
        from ctxproto.serve.local_upstream import LocalUpstream

        engine = spec.load_engine(max_batch_size=spec.max_batch_size)
        return LocalUpstream(engine, model=spec.model, owned=True)
    return RemoteUpstream(
        spec.base_url,
        model=spec.model,
        api_key=spec.resolved_api_key(),
        timeout=spec.timeout,
        retries=spec.retries,
        cache_salt=spec.cache_salt,
    )
