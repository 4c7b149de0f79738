"""Where a store lives: a folder on this machine or a server named by a URL.

Config names every store by one string. A path keeps today's embedded stores
(FAISS, diskcache); ``postgresql://…`` and ``redis://…`` name a server shared
by every replica. Connection strings may carry a password, so anything shown
to a person goes through ``redact_url`` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ctxproto.errors import ConfigError

__all__ = ["StoreLocation", "redact_url", "scrub_secrets", "store_location", "url_secrets"]

StoreLocation = Literal["path", "postgresql", "redis"]

_SCHEMES: dict[str, StoreLocation] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "redis": "redis",
    "rediss": "redis",
}


def store_location(location: str) -> StoreLocation:
    """``"postgresql"`` or ``"redis"`` for a server URL, ``"path"`` for a path.

    A URL of any other scheme is a ``ConfigError``: read as a path, ``s3://bucket``
    would quietly become a local folder named ``s3:``.
    """
    scheme, separator, _ = location.partition("://")
    if not separator:
        return "path"
    kind = _SCHEMES.get(scheme.lower())
    if kind is None:
        raise ConfigError(f"no store lives at a '{scheme}://' URL")
    return kind


# Query parameters that carry a secret: libpq and redis-py both read a password there.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``, fit for messages and logs.

    A password may sit in the user part (``user:secret@host``) or in the query
    (``?password=secret``); both are masked.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable store URL>"
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret_in_query = any(key.lower() in _SECRET_PARAMETERS for key, _ in query)
    if not password and not secret_in_query:
        return url
    if password:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if secret_in_query:
        masked = [(k, "***" if k.lower() in _SECRET_PARAMETERS else v) for k, v in query]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    return urlunsplit(parts)


def url_secrets(url: str) -> list[str]:
    """Every password ``url`` carries, decoded, so error texts can be scrubbed of them."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    found = [unquote(password)] if password else []
    found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMETERS and v]
    return found


def scrub_secrets(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` (from ``url_secrets``) replaced by ``***``.

    A driver's error may quote the password it was given: libpq's refusal of a
    password with a stray ``%`` (``50%off``) reads ``invalid percent-encoded
    token: "50%off"``.
    """
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
