"""Where a store lives: a folder on this machine or a server named by a URL.

Config names every store by one string. A path keeps today's embedded stores
(FAISS, diskcache); ``postgresql://…`` and ``redis://…`` name a server shared
by every replica. Connection strings may carry a password, so anything shown
to a person goes through ``redact_url`` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

from ctxproto.errors import ConfigError

__all__ = [
    "StoreLocation",
    "check_credentials",
    "redact_url",
    "scrub_secrets",
    "store_location",
    "url_secrets",
]

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
    would quietly become a local folder named ``s3:``. So is one whose password
    is not percent-encoded (``check_credentials``).
    """
    scheme, separator, _ = location.partition("://")
    if not separator:
        return "path"
    kind = _SCHEMES.get(scheme.lower())
    if kind is None:
        raise ConfigError(f"no store lives at a '{scheme}://' URL")
    check_credentials(location)
    return kind


def check_credentials(url: str) -> None:
    """A ``ConfigError`` when ``url``'s user name or password holds an unencoded
    ``/``, ``?``, ``#`` or ``@``, which makes the URL read otherwise.

    Generated passwords often hold them (base64 has ``/``). ``redis://:s3cr/et@host/0``
    reads as host ``""`` with port ``s3cr``, and the drivers then quote that
    part of the password in their errors; a ``#`` also ended the URL where a
    Redis cache's name begins. The message shows no part of the password.
    """
    if _credentials_cut(url):
        raise ConfigError(
            f"the user name or password in {redact_url(url)} holds a '/', '?', '#' or '@' "
            "that is not percent-encoded, so the URL does not read as meant",
            expected="them percent-encoded: / as %2F, ? as %3F, # as %23, @ as %40",
        )


def _credentials_cut(url: str) -> bool:
    """Whether an unencoded character of the user part moved the URL's host.

    Only a URL that reads as no valid server is taken to be cut: a host part
    that is no ``host:port`` (PostgreSQL: a comma-separated list of them, as
    libpq reads several hosts), two ``@`` in the host part (PostgreSQL: libpq
    splits at the first, urllib at the last), an ``@`` after the host part where
    none can be (the path, a query parameter's name, a PostgreSQL fragment, a
    Redis fragment that goes on with a ``/``). An ``@`` in a query value
    (``?user=me@server``) or a Redis cache name (``#team@eu``) is left as
    written. A database name holding ``@`` is refused with the rest: it cannot
    be told from ``user:123/secret@db``, and libpq reads it percent-encoded.
    """
    scheme, _, rest = url.partition("://")
    if "@" not in rest:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:  # shown as unparsable, never in part
        return False
    netloc = parts.netloc
    postgresql = _SCHEMES.get(scheme.lower()) == "postgresql"
    if postgresql and netloc.count("@") > 1:
        return True
    hosts = netloc.rpartition("@")[2]
    if not all(_is_host(host) for host in (hosts.split(",") if postgresql else [hosts])):
        return True
    cut_fragment = "@" in parts.fragment and (postgresql or "/" in parts.fragment)
    return (
        "@" in parts.path
        or cut_fragment
        or any("@" in item.partition("=")[0] for item in parts.query.split("&"))
    )


def _is_host(host: str) -> bool:
    """Whether ``host`` reads as ``host[:port]`` (empty: a socket or the default)."""
    try:
        parsed = urlsplit(f"//{host}")
        parsed.port  # noqa: B018  (parsing the port is the check)
    except ValueError:
        return False
    return not host or bool(parsed.hostname)


def _user_part(url: str) -> str:
    """The user part of a cut URL, up to its last ``@``: all that may be secret."""
    return url.partition("://")[2].rpartition("@")[0]


# Query parameters that carry a secret: libpq and redis-py both read a password there.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``, fit for messages and logs.

    A password may sit in the user part (``user:secret@host``) or in the query
    (``?password=secret``); both are masked. When an unencoded character cut
    the user part short (``check_credentials``), all of it up to the last ``@``
    is masked.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable store URL>"
    if _credentials_cut(url):
        scheme, _, rest = url.partition("://")
        user = _user_part(url).partition(":")[0]
        shown = "***" if any(c in user for c in "/?#@") else f"{user}:***"
        return redact_url(f"{scheme}://{shown}@{rest.rpartition('@')[2]}")
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
    """Every password ``url`` carries, as written and decoded, so error texts can be
    scrubbed of them: a driver may quote either (libpq quotes a password it could
    not decode as written, ``Tr0ub%40dor%zz``)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    if _credentials_cut(url):
        password = _user_part(url).partition(":")[2]
    written = [password] if password else []
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        if unquote(key).lower() in _SECRET_PARAMETERS and value:
            written.append(value)
    forms = (str, unquote, unquote_plus)  # a query value may write a space as "+"
    found = {form(secret) for secret in written for form in forms}
    return sorted(found, key=len, reverse=True)  # a longer one first: none left half-shown


def scrub_secrets(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` (from ``url_secrets``) replaced by ``***``.

    A driver's error may quote the password it was given: libpq's refusal of a
    password with a stray ``%`` (``50%off``) reads ``invalid percent-encoded
    token: "50%off"``.
    """
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
