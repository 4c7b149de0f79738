"""The input limits: bounded reads and short excerpts."""

import time
from pathlib import Path

import pytest

from ctxproto import ConfigError
from ctxproto.limits import EXCERPT_CHARS, excerpt, read_text_capped


def test_a_short_value_is_quoted_whole() -> None:
    assert excerpt("hello") == "'hello'"
    assert excerpt(42) == "42"


def test_a_long_string_is_cut_and_its_length_given() -> None:
    text = excerpt("a" * 1_000_000)
    assert text.endswith("… (1000000 chars)")
    assert len(text) < EXCERPT_CHARS + 30


def test_a_huge_shared_structure_is_summarized_without_walking_it() -> None:
    # 10**8 leaves by reference; a full repr would never finish.
    nested: list[object] = ["lol"] * 10
    for _ in range(7):
        nested = [nested] * 10
    start = time.perf_counter()
    text = excerpt(nested)
    assert time.perf_counter() - start < 0.5
    assert len(text) <= EXCERPT_CHARS + 1


def test_an_endless_file_is_refused_after_the_cap() -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="larger than the 1 KiB limit"):
        read_text_capped("/dev/zero", limit=1024, what="request")
    assert time.perf_counter() - start < 1.0


def test_a_file_at_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "exact.txt"
    path.write_text("x" * 1024)
    assert read_text_capped(path, limit=1024, what="request") == "x" * 1024
    path.write_text("x" * 1025)
    with pytest.raises(ConfigError):
        read_text_capped(path, limit=1024, what="request")


def test_a_folder_or_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        read_text_capped(tmp_path, limit=10, what="config")
    with pytest.raises(ConfigError, match="cannot read config"):
        read_text_capped(tmp_path / "absent", limit=10, what="config")
