"""The serve config of proxy replicas that share one Redis server, for the tests.

Sessions (stateful), summaries and the semantic cache on the Redis server, the
scripted upstream (``scripted_upstream.py``), one tenant; optionally a
retriever first. Tests run it in-process (``ProxyState.from_config``) or write
it to a file for ``ctxproto serve`` processes.
"""

from __future__ import annotations

from typing import Any, Literal


def replicated_config(
    redis: str,
    *,
    cache: str,
    upstream: str,
    tenant: dict[str, Any],
    scope: Literal["query", "documents"],
    knowledge: str | None = None,
) -> dict[str, Any]:
    """``cache`` is the semantic cache's location (``REDIS_URL#name``), ``tenant`` a
    ``tenants`` entry, ``knowledge`` the retrieval store of a retriever stage."""
    retriever = {"type": "retriever", "init_parameters": {"store": knowledge, "k": 2}}
    return {
        "pipeline": {
            "stages": [
                *([retriever] if knowledge is not None else []),
                {"type": "semantic_cache", "init_parameters": {"path": cache, "scope": scope}},
                {
                    "type": "summarizer",
                    "init_parameters": {
                        "keep_turns": 2,
                        "checkpoint_every": 2,
                        "model": None,
                        "state_path": redis,
                    },
                },
            ],
            "budget": {"max_prompt_tokens": 1500},
        },
        "upstream": {"type": "openai", "base_url": upstream, "model": "scripted"},
        "tenants": [tenant],
        "sessions": {"mode": "stateful", "store": redis},
    }
