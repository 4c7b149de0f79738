"""Prometheus metrics of one proxy: what it answered, saved and how the upstream did.

Each app has its own registry (not the process-global one), so several apps in
one process (tests, the runtime's server next to a proxy) never collide.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CLIENT_CLOSED_REQUEST", "ProxyMetrics", "Route"]

# The error code of a request whose client left before it was answered (nginx's 499):
# one code for every place a client can leave, so a dashboard sees them all.
CLIENT_CLOSED_REQUEST = "client_closed_request"

Route = Literal["chat_completions", "embeddings"]
"""The ``route`` label: the routes that forward to the upstream, a fixed set. Never the
request's path, which a client chooses: each path it sent would be a series for ever."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ProxyMetrics:
    """The counters and histograms ``GET /metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ctxproto_requests",
            "Requests answered, by route.",
            ["route", "tenant", "cache"],
            registry=r,
        )
        self.cache_hits = Counter(
            "ctxproto_cache_hits", "Requests answered from the semantic cache.", registry=r
        )
        self.tokens_original = Counter(
            "ctxproto_tokens_original", "Prompt tokens as received.", registry=r
        )
        self.tokens_sent = Counter("ctxproto_tokens_sent", "Prompt tokens forwarded.", registry=r)
        self.tokens_saved = Counter(
            "ctxproto_tokens_saved", "Prompt tokens the pipeline removed.", registry=r
        )
        self.cached_prefix_tokens = Counter(
            "ctxproto_cached_prefix_tokens",
            "Prompt tokens the upstream served from its prefix cache.",
            registry=r,
        )
        self.upstream_latency = Histogram(
            "ctxproto_upstream_latency_seconds",
            "Time from forwarding a request to its last byte.",
            ["route", "stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("ctxproto_errors", "Errors answered, by code.", ["code"], registry=r)

    def forwarded(self, route: Route, tenant: str, seconds: float) -> None:
        """Count a request forwarded as it came (no pipeline, no cache: ``bypass``) and
        the ``seconds`` its upstream took, in the chat route's metrics, by ``route``."""
        self.requests.labels(route=route, tenant=tenant, cache="bypass").inc()
        self.upstream_latency.labels(route=route, stream="false").observe(seconds)

    def client_left(self) -> None:
        """Count a request whose client hung up before its answer was whole.

        Its body half sent, its plain answer still coming, or its stream cut
        mid-answer: no answer reached anyone, and counted nowhere such requests
        would look to an operator as if they never came.
        """
        self.errors.labels(code=CLIENT_CLOSED_REQUEST).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
