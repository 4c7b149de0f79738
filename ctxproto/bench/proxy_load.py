"""Concurrent HTTP clients for ``bench proxy``'s cache-hit figure, in a process of their own.

A load generator inside the server's interpreter measures itself as much as the
server: the client's HTTP stack costs about as much CPU per request as the
proxy's hit path, and both would take turns on one GIL. Real clients are other
processes, so ``post_concurrently`` runs them in a child interpreter
(``python -m ctxproto.bench.proxy_load``) that reports its counts as one JSON
line on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from ctxproto.errors import BackendError

__all__ = ["LoadResult", "post_concurrently"]


@dataclass(frozen=True)
class LoadResult:
    """What ``clients`` concurrent clients got in ``seconds`` of posting."""

    answered: int
    """Responses with status 200."""
    hits: int
    """Responses the proxy answered from its semantic cache (``x-ctxproto-cache: hit``)."""
    seconds: float

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0


def post_concurrently(url: str, body: dict[str, Any], clients: int, seconds: float) -> LoadResult:
    """Post ``body`` to ``url`` from ``clients`` concurrent clients for ``seconds``, out of process.

    The child is given this process's ``sys.path``, so it imports the same
    ``ctxproto`` (a source checkout as much as an installed one).
    """
    job = {"url": url, "body": body, "clients": clients, "seconds": seconds}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ctxproto.bench.proxy_load"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds + 120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BackendError(f"the load clients did not finish in {seconds + 120:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise BackendError(f"the load clients failed: {done.stderr.strip()[-2000:]}")
    counts = json.loads(lines[-1])
    return LoadResult(int(counts["answered"]), int(counts["hits"]), float(counts["seconds"]))


async def _post_for(url: str, body: dict[str, Any], clients: int, seconds: float) -> LoadResult:
    import httpx

    async def client_loop(client: httpx.AsyncClient, deadline: float) -> tuple[int, int]:
        answered = hits = 0
        while time.perf_counter() < deadline:
            response = await client.post(url, json=body)
            answered += response.status_code == 200
            hits += response.headers.get("x-ctxproto-cache") == "hit"
        return answered, hits

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + seconds
        counts = await asyncio.gather(*(client_loop(client, deadline) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return LoadResult(sum(a for a, _ in counts), sum(h for _, h in counts), elapsed)


def main() -> int:
    """The child: a JSON job on stdin, the counts as one JSON line on stdout."""
    job = json.loads(sys.stdin.read())
    result = asyncio.run(
        _post_for(job["url"], job["body"], int(job["clients"]), float(job["seconds"]))
    )
    print(json.dumps({"answered": result.answered, "hits": result.hits, "seconds": result.seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
