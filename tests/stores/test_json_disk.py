"""The diskcache disks every store opens its cache with: rows someone else planted
neither run code nor reach files outside the cache folder."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import diskcache
import pytest

from ctxproto.errors import StoreError
from ctxproto.stores.json_disk import JSONOnlyDisk, PlainDisk


def _plant_file_name(folder: Path, file_name: str) -> None:
    """Point the cache's one row at ``file_name``, as a hand-edited cache.db would."""
    with sqlite3.connect(folder / "cache.db") as db:
        db.execute(
            "UPDATE Cache SET mode = ?, filename = ?, value = NULL",
            (diskcache.core.MODE_BINARY, file_name),
        )
    db.close()


@pytest.mark.parametrize("disk", [PlainDisk, JSONOnlyDisk])
@pytest.mark.parametrize("outside", ["absolute", "parent", "link"])
def test_a_row_naming_a_file_outside_the_folder_is_neither_read_nor_deleted(
    tmp_path: Path, disk: type[diskcache.Disk], outside: str
) -> None:
    folder, secret = tmp_path / "cache", tmp_path / "secret.txt"
    secret.write_text("not the cache's to read")
    names = {"absolute": str(secret), "parent": "../secret.txt", "link": "link.val"}
    cache = diskcache.Cache(str(folder), disk=disk)
    (folder / "link.val").symlink_to(secret)
    cache.set("k", "v")
    _plant_file_name(folder, names[outside])

    with pytest.raises(StoreError, match=f"cache in {folder} names a value file outside"):
        cache.get("k")
    with pytest.raises(StoreError, match="outside its folder"):
        cache.set("k", "replaced")
    _plant_file_name(folder, names[outside])
    with pytest.raises(StoreError, match="outside its folder"):
        cache.delete("k")
    cache.close()
    assert secret.read_text() == "not the cache's to read"


def test_values_in_files_inside_the_folder_still_work(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path), disk=PlainDisk, disk_min_file_size=0)
    cache.set("k", b"x" * 100)
    assert cache.get("k") == b"x" * 100
    files = list(tmp_path.rglob("*.val"))
    assert len(files) == 1
    cache.delete("k")
    assert not files[0].exists()
    cache.close()
