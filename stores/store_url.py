"""Where a store lives: a folder on this machine or a server named by a URL.

Config names every store by one string. A path keeps today's embedded stores
(FAISS, diskcache); ``postgresql://…`` and ``redis://…`` name a server shared
by every replica. Connection strings may carry a password, so anything shown
to a person goes through ``redact_url`` first.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = ["StoreLocation", "redact_url", "store_location"]

StoreLocation = Literal["path", "postgresql", "redis"]

_SCHEMES: dict[str, StoreLocation] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "redis": "redis",
    "rediss": "redis",
}


def store_location(location: str) -> StoreLocation:
    """``"postgresql"`` or ``"redis"`` for a server URL, ``"path"`` for anything else."""
    scheme, separator, _ = location.partition("://")
    if not separator:
        return "path"
    return _SCHEMES.get(scheme.lower(), "path")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable store URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
