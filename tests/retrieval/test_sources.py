"""Reading documents to index: what a folder or a JSONL file gives."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

from ctxproto.retrieval import read_documents
from ctxproto.retrieval.chunking import chunk_document


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
