"""Where a store lives: a folder on this machine, or a server named by a URL.

Every store config key (summarizer ``state_path``, semantic-cache ``path``, the
proxy's ``sessions.store``) takes either a path, which keeps today's embedded
stores, or a ``redis://`` / ``rediss://`` / ``unix://`` URL, which puts the
state on a Redis-protocol server that several replicas share. URLs carry
passwords, so every message that names one goes through ``redacted`` first.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDIS_SCHEMES", "is_redis_url", "redacted"]

REDIS_SCHEMES = ("redis", "rediss", "unix")
"""URL schemes redis-py opens: TCP, TCP with TLS, and a Unix socket."""


def is_redis_url(location: object) -> bool:
    """Whether a store location names a Redis-protocol server rather than a folder."""
    if not isinstance(location, str) or "://" not in location:
        return False
    return location.split("://", 1)[0].lower() in REDIS_SCHEMES


def redacted(url: str) -> str:
    """``url`` with any password (in the user part or a ``password=`` query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an unparsable port: keep the scheme only
        return url.split("://", 1)[0] + "://***"
    netloc = parts.netloc
    if password is not None:
        user, host = netloc.rsplit("@", 1)
        name = user.split(":", 1)[0]
        netloc = f"{name}:***@{host}"
    query = urlencode(
        [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query)],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
