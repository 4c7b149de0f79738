"""``GET /metrics`` of a proxy under test, read as a Prometheus scraper reads it."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ctxproto.serve import ServerThread


def metric(server: ServerThread, name: str, **labels: str) -> float:
    """One sample of ``/metrics``; 0 when it has no series yet."""
    text = httpx.get(f"{server.base_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0
