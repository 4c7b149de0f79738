"""Engines over the session's one embedded model: with the prefix cache, and without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ctxproto.runtime import Engine

SYSTEM = (
    "You are the support assistant of Acme Networks. Answer briefly and politely. "
    "Acme sells the R7 router, the M2 mesh extender and the S1 smart switch. "
    "Warranty is two years; returns are accepted within 30 days with the receipt."
)


def chat(question: str, system: str = SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


@pytest.fixture(scope="session")
def engine(lm) -> Iterator[Engine]:
    """Prefix cache on, batching on: the configuration users get."""
    with Engine() as running:
        yield running


@pytest.fixture(scope="session")
def plain_engine(lm) -> Iterator[Engine]:
    """No prefix cache, one request at a time, one token per forward: the reference
    every answer must equal."""
    with Engine(prefix_cache=False, max_batch_size=1, speculate=False) as running:
        yield running
