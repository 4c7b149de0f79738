"""Reading documents to index: what a folder or a JSONL file gives."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

import pytest

from ctxproto.errors import ConfigError
from ctxproto.retrieval import read_documents
from ctxproto.retrieval.chunking import chunk_document
from ctxproto.retrieval.sources import UnreadableFile
from tests.conftest import Unprivileged


def test_a_byte_order_mark_neither_hides_a_heading_nor_breaks_a_jsonl_line(
    tmp_path: Path, counter: Any
) -> None:
    """Windows tools write UTF-8 with a byte order mark; the files must index as without."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "refunds.md").write_bytes(codecs.BOM_UTF8 + b"# Refunds\n\nRefunds take five days.\n")
    (document,) = read_documents(folder)
    assert document.text.startswith("# Refunds")
    (chunk,) = chunk_document(document, counter)
    assert chunk.metadata["headings"] == ["Refunds"] and chunk.text == "Refunds take five days."
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_bytes(
        codecs.BOM_UTF8 + b'{"id": "a", "text": "One."}\n{"id": "b", "text": "Two."}\n'
    )
    assert [d.id for d in read_documents(jsonl)] == ["a", "b"]


def test_a_file_gone_or_turned_into_a_folder_after_the_listing_is_skipped_not_fatal(
    tmp_path: Path,
) -> None:
    """The folder is listed before its files are read: a file deleted meanwhile (an
    editor's save, a sync) stopped every other file from indexing."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("a.md", "b.md", "c.md", "d.md"):
        (folder / name).write_text(f"Notes in {name}.")
    skipped: list[UnreadableFile] = []
    documents = read_documents(folder, on_unreadable=skipped.append)
    assert next(documents).id == "a.md"  # listed, and the first file read
    (folder / "b.md").unlink()
    (folder / "c.md").unlink()
    (folder / "c.md").mkdir()
    assert [d.id for d in documents] == ["d.md"]
    assert [(s.id, s.reason) for s in skipped] == [
        ("b.md", "cannot read: No such file or directory"),
        ("c.md", "cannot read: Is a directory"),
    ]
    # Without a receiver, as before, the first one is an error naming it.
    (folder / "e.md").write_bytes(b"caf\xe9")
    with pytest.raises(ConfigError, match=r"e\.md: not UTF-8 text at byte 3 \(0xe9\)"):
        list(read_documents(folder))


READ_AS_NOBODY = """
import json, sys
from pathlib import Path
from ctxproto.retrieval import read_documents

skipped = []
ids = [d.id for d in read_documents(Path(sys.argv[1]), on_unreadable=skipped.append)]
print(json.dumps({"ids": ids, "skipped": [[s.id, s.reason, s.folder] for s in skipped]}))
"""


def test_a_file_this_user_may_not_read_is_skipped_not_fatal(unprivileged: Unprivileged) -> None:
    folder = unprivileged.folder / "docs"
    folder.mkdir()
    (folder / "open.md").write_text("Anyone may read this.")
    (folder / "secret.md").write_text("Only its owner may read this.")
    (folder / "secret.md").chmod(0o000)
    result = unprivileged.run(READ_AS_NOBODY, str(folder))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "ids": ["open.md"],
        "skipped": [["secret.md", "cannot read: Permission denied", False]],
    }


def test_a_folder_this_user_may_not_list_is_told_not_passed_over(
    unprivileged: Unprivileged,
) -> None:
    """``rglob`` passed over it without a word: its files read as deleted ones."""
    folder = unprivileged.folder / "docs"
    (folder / "private").mkdir(parents=True)
    (folder / "open.md").write_text("Anyone may read this.")
    (folder / "private" / "plans.md").write_text("Only its owner may list this folder.")
    (folder / "private").chmod(0o700)
    result = unprivileged.run(READ_AS_NOBODY, str(folder))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "ids": ["open.md"],
        "skipped": [["private", "cannot list the folder: Permission denied", True]],
    }
