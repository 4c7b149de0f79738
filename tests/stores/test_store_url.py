"""Store locations: a path or a server URL, and URLs shown without their password."""

from __future__ import annotations

import pytest

from ctxproto.errors import ConfigError
from ctxproto.stores.store_url import redact_url, store_location, url_secrets


@pytest.mark.parametrize(
    ("location", "kind"),
    [
        ("kb/", "path"),
        ("/var/lib/ctxproto/kb", "path"),
        ("postgresql://u@db/ctx?table=kb", "postgresql"),
        ("POSTGRES://db/ctx", "postgresql"),
        ("redis://cache:6379/0", "redis"),
        ("rediss://cache", "redis"),
    ],
)
def test_a_location_is_a_path_unless_it_names_a_server_scheme(location: str, kind: str) -> None:
    assert store_location(location) == kind


@pytest.mark.parametrize("location", ["file://kb", "s3://bucket/kb", "mongodb://db"])
def test_a_url_of_another_scheme_is_refused_not_read_as_a_folder(location: str) -> None:
    with pytest.raises(ConfigError, match="no store lives at"):
        store_location(location)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@db:5432/ctx?table=kb", "postgresql://u:***@db:5432/ctx?table=kb"),
        ("postgresql://u:p@ss@db/ctx", "postgresql://u:***@db/ctx"),
        ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://u@db/ctx", "postgresql://u@db/ctx"),
        ("postgresql://u:secret@[::1", "<unparsable store URL>"),
        (
            "postgresql://u@db/ctx?password=s3cret&table=kb",
            "postgresql://u@db/ctx?password=***&table=kb",
        ),
        ("redis://cache:6379/0?Password=s3cret", "redis://cache:6379/0?Password=***"),
        ("postgresql://u:a@db/ctx?sslpassword=b", "postgresql://u:***@db/ctx?sslpassword=***"),
    ],
)
def test_a_password_never_survives_redaction(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_every_secret_of_a_url_is_listed_for_scrubbing() -> None:
    url = "postgresql://u:p%40ss@db/ctx?sslpassword=key&password=s3cret&table=kb"
    assert sorted(url_secrets(url)) == ["key", "p%40ss", "p@ss", "s3cret"]  # as written, decoded
    assert url_secrets("redis://cache:6379/0") == []


@pytest.mark.parametrize(
    "url",
    [  # generated passwords (base64 has '/') written as is
        "redis://:Zq9/Xw7@cache:6379/0",
        "redis://:123/Xw7@cache:6379/0",
        "redis://:Zq9#Xw7@cache:6379/0#answers",  # the cache name began at the first '#'
        "redis://:Zq9?Xw7@cache:6379/0",
        "redis://app:12?Xw7@cache:6379/0",
        "postgresql://reader:Zq9/Xw7@db/ctx?table=kb",
        "postgresql://reader:Zq9?Xw7@db/ctx",
        "postgresql://reader:Zq9#Xw7@db/ctx",
        "postgresql://reader:Zq9@Xw7@db/ctx",  # libpq ends the user part at the first '@'
        # An '@' and then a '/' or '#': every reader ends the host part at the first
        # of them, and takes 'Xw7' for the host.
        "redis://:Zq9@Xw7/Ab3@cache:6379/0",
        "redis://:Zq9@Xw7#Ab3@cache:6379/0",
        "postgresql://reader:Zq9@Xw7/Ab3@db/ctx",
        "postgresql://reader:123/Xw7@db/ctx",  # '123' reads as a port
    ],
)
def test_an_unencoded_password_is_a_config_error_that_never_shows_it(url: str) -> None:
    with pytest.raises(ConfigError, match="percent-encoded") as raised:
        store_location(url)
    for shown in (str(raised.value), redact_url(url)):
        assert "Xw7" not in shown and "Zq9" not in shown and "Ab3" not in shown, shown
    assert any("Xw7" in secret for secret in url_secrets(url))  # scrubbed from driver errors


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://db:5432/ctx?user=reader@server",  # an Azure user name in the query
        "postgresql:///ctx?host=/run/postgresql&user=reader@server",
        "redis://cache:6379/0#team@eu",  # a cache name
        "redis://:Zq9%2FXw7@cache:6379/0",
        "redis://:Zq9@Xw7@cache:6379/0",  # redis-py reads the user part up to the last '@'
        "postgresql://h1:5432,h2:5433/ctx?user=reader@server",  # libpq's several hosts
    ],
)
def test_an_at_sign_where_a_url_may_hold_one_is_no_cut_password(url: str) -> None:
    assert store_location(url) in ("postgresql", "redis")
