"""How a Redis URL is read: what it names, and what it cannot name, before anything is stored."""

from __future__ import annotations

import pytest

from ctxproto.errors import ConfigError
from ctxproto.stores.redis_connection import RedisConnection
from ctxproto.stores.redis_session_state import RedisSessionStateStore
from ctxproto.stores.semantic_cache.redis_storage import RedisCacheStorage
from tests.servers_redis import RedisServer


@pytest.mark.parametrize("path", ["/staging", "/tenant-a", "/0/answers", "/-1"])
def test_a_path_that_is_no_database_number_is_a_config_error(
    redis_server: RedisServer, path: str
) -> None:
    """redis-py read a path it could not read as a number as database 0: two deployments
    kept apart by ``/staging`` and ``/prod``, as docs/deploy.md has them kept apart by
    ``/0`` and ``/1``, shared one database and each other's sessions."""
    url = redis_server.url.removesuffix("/0") + path
    with pytest.raises(ConfigError, match="not a database number") as raised:
        RedisConnection(url)
    assert path in str(raised.value)
    with pytest.raises(ConfigError, match="not a database number"):
        RedisSessionStateStore(url, namespace=redis_server.namespace())


@pytest.mark.parametrize("path", ["", "/", "/0", "/1", "/1/"])
def test_no_path_or_a_database_number_is_read_as_before(
    redis_server: RedisServer, path: str
) -> None:
    connection = RedisConnection(redis_server.url.removesuffix("/0") + path)
    try:
        expected = int(path.strip("/") or 0)
        assert connection.client.connection_pool.connection_kwargs.get("db", 0) == expected
    finally:
        connection.close()


@pytest.mark.parametrize("option", ["timeout=2", "socket_timout=2", "tenant=a"])
def test_a_query_parameter_that_is_no_connection_option_is_a_config_error_naming_it(
    redis_server: RedisServer, option: str
) -> None:
    """redis-py passed it to the connection, which raised a bare ``TypeError`` (no URL
    named, outside ctxproto's errors) when the store was opened."""
    name = option.partition("=")[0]
    url = f"{redis_server.url}?{option}"
    with pytest.raises(ConfigError, match=f"'{name}'"):
        RedisConnection(url)
    with pytest.raises(ConfigError, match=f"'{name}'"):
        RedisCacheStorage(f"{url}#{redis_server.namespace()}")


def test_connection_options_in_the_query_still_work(redis_server: RedisServer) -> None:
    connection = RedisConnection(f"{redis_server.url}?socket_timeout=2&client_name=ctxproto")
    try:
        assert connection.client.connection_pool.connection_kwargs["socket_timeout"] == 2
        connection.ping()
    finally:
        connection.close()
