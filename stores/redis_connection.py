"""One pooled, time-bounded connection to a Redis-protocol server, shared by the Redis stores.

A proxy must never hang on a store: every socket operation has a timeout, a
dropped connection is retried twice with a short backoff (the pool reconnects),
and whatever still fails becomes a ``StoreError`` that names the server by its
URL with the password redacted: a ``StoreUnavailableError`` when the server
could not be reached or did not answer in time (refused, reset, timed out,
still loading its data) or answered that it cannot serve for now (``BUSY``
running a long script, ``READONLY`` as a primary demoted in a failover,
``MASTERDOWN`` as a replica that lost its primary, ``CLUSTERDOWN`` and
``TRYAGAIN`` from a cluster failing over or resharding), which a retry may clear,
and a plain ``StoreError``
when it answered with a refusal (wrong password, a command it rejects), which
a retry would meet again. The first ``PING`` happens when the store is
opened, so a wrong URL or a server that is down fails at start-up, not on the
first request. Works with Redis and with Valkey and other servers that speak
its protocol.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ctxproto.errors import ConfigError, StoreError, StoreUnavailableError
from ctxproto.stores.store_url import check_credentials, redact_url, scrub_secrets, url_secrets

__all__ = ["RedisConnection", "glob_escape", "key_part"]

DEFAULT_TIMEOUT_S = 5.0
"""Connect and read timeout; a ``socket_timeout=`` query in the URL overrides it."""

_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)
"""What redis-py raises when the server is down, gone mid-reply, slow or still loading
(``BusyLoadingError``, the ``LOADING`` reply, is a ``ConnectionError``), and the socket
errors it lets through."""
_REFUSED = (redis.AuthenticationError, redis.exceptions.AuthorizationError)
"""``ConnectionError``s that are the server's answer, not its absence: the credentials."""
_NOT_SERVING_NOW = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)
"""Replies a retry outlives: ``READONLY`` from a primary demoted to a replica while a
failover promotes another (the client reconnects to the new one), ``MASTERDOWN`` from
a replica that lost its primary and serves no stale data, ``CLUSTERDOWN`` from a
cluster node while a slot has no reachable primary (a failover under way), and
``TRYAGAIN`` from one moving a slot to another node (resharding), where a
multi-key command finds its keys split. redis-py 6 and later parse each into its class
(``MasterDownError`` is a ``ClusterDownError``), a pipeline's too; redis-py 5 parses
only ``READONLY`` so, the rest are the plain ``ResponseError`` of ``_NOT_SERVING_REPLY``."""
_NOT_SERVING_REPLY = re.compile(
    r"(?:^|of pipeline caused error: )(?:BUSY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN)\b"
)
"""The replies a retry outlives that redis-py leaves a plain ``ResponseError`` whose text
begins with the reply's code, after its own prefix when a pipeline's command met it:
``BUSY`` (a script has run past ``busy-reply-threshold`` and the server answers nothing
else until it ends) in every version, and the cluster's in redis-py 5, which
``pyproject.toml`` allows. Matched by their text, as the server sent them, these stay
a ``StoreUnavailableError`` whichever version parsed them."""


class RedisConnection:
    """A client for ``url`` whose failures are ``StoreError`` naming the redacted URL."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.name = redact_url(url)
        self._secrets = url_secrets(url)
        check_credentials(url)
        _check_database(url, self.name)
        try:
            self.client: redis.Redis = redis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(f"not a usable Redis URL {self.name}: {self._scrub(exc)}") from None
        unknown = _unknown_options(self.client.connection_pool)
        if unknown:
            self.client.close()
            raise ConfigError(
                f"the Redis URL {self.name} has the query parameter "
                f"{', '.join(repr(name) for name in unknown)}, which is no connection option",
                expected="redis-py's connection options, such as ?socket_timeout=2",
            )
        self.ping()

    def ping(self) -> None:
        """One round trip; a ``StoreError`` naming the URL when the server does not answer."""
        with self.reporting("cannot reach the store"):
            self.client.ping()

    @contextmanager
    def reporting(self, what: str) -> Iterator[None]:
        """Redis and socket errors inside the block as a ``StoreError``: ``{what} at {url}``,
        a ``StoreUnavailableError`` when the server was not there to answer."""
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            error = StoreUnavailableError if _unavailable(exc) else StoreError
            raise error(f"{what} at {self.name}: {self._scrub(exc)}") from None

    def close(self) -> None:
        self.client.close()

    def _scrub(self, exc: BaseException) -> str:
        return scrub_secrets(str(exc) or type(exc).__name__, self._secrets)


_DATABASE_PATH = re.compile(r"/?(?:\d+/?)?")
"""The path of a Redis URL: none, or a database number (``/0``, ``/1``)."""


def _check_database(url: str, shown: str) -> None:
    """A ``ConfigError`` naming ``shown`` when the URL's path is not a database number.

    redis-py reads a path it cannot read as a number (``/staging``, ``/tenant-a``) as
    database 0, so two deployments kept apart by such paths shared one database, and
    each one's sessions and cache entries were the other's. A URL ``urlsplit``
    cannot read is left to ``from_url``, whose ``ValueError`` is reported.
    """
    try:
        path = unquote(urlsplit(url).path)
    except ValueError:
        return
    if not _DATABASE_PATH.fullmatch(path):
        raise ConfigError(
            f"the path of the Redis URL {shown} is not a database number",
            expected="redis://host:port/N with N a database number, or no path",
        )


def _unknown_options(pool: redis.ConnectionPool) -> list[str]:
    """The options a URL's query gave ``pool`` that its connections do not take.

    redis-py hands every query parameter it does not know to the connection, which
    refuses it with a bare ``TypeError`` when the first one is made (``?timeout=2``,
    a misspelt ``?socket_timout=2``): a traceback at start-up instead of the URL
    named. The connection class's parameters are read from its signatures, so this
    follows the installed redis-py.
    """
    accepted: set[str] = set()
    for cls in pool.connection_class.__mro__:
        init = vars(cls).get("__init__")
        if cls is not object and init is not None:
            accepted |= set(inspect.signature(init).parameters)
    return sorted(set(pool.connection_kwargs) - accepted)


def _unavailable(exc: redis.RedisError | OSError) -> bool:
    """Whether a retry may clear ``exc``: the server was not there to answer, or said it
    cannot serve for now; a refusal of the credentials or of the command is for good."""
    if isinstance(exc, _REFUSED):
        return False
    if isinstance(exc, (*_UNREACHABLE, *_NOT_SERVING_NOW)):
        return True
    return isinstance(exc, redis.ResponseError) and _NOT_SERVING_REPLY.search(str(exc)) is not None


def key_part(identifier: str) -> str:
    """``identifier`` percent-encoded for a key: no ``:`` survives, distinct ids stay distinct."""
    return quote(identifier, safe="")


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis ``MATCH`` pattern (``SCAN``, ``SSCAN``):
    ids may hold ``*``, ``?``, ``[`` and ``]``."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
