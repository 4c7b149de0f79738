"""Reading documents to index: a folder of text files, or a JSONL file of documents.

A folder contributes its ``.txt``, ``.md`` and ``.markdown`` files (document id =
path relative to the folder); a JSONL file contributes one document per line
(``{"id": ..., "text": ..., "metadata": {...}, "source": ...}``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError

__all__ = ["TEXT_SUFFIXES", "read_documents"]

TEXT_SUFFIXES = (".txt", ".md", ".markdown")


def read_documents(source: Path) -> Iterator[Document]:
    """Documents of a folder or a JSONL file; an unreadable one is a ``ConfigError`` naming it."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES):
            relative = path.relative_to(source).as_posix()
            yield Document(id=relative, text=_read_text(path), source=relative)
    elif source.is_file():
        with source.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _jsonl_document(line, source, number)
    else:
        raise ConfigError("no such file or folder", file=str(source))


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreError(f"'{path}' is not UTF-8 text (binary?): {exc.reason}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc


def _jsonl_document(line: bytes, source: Path, number: int) -> Document:
    try:
        return Document.model_validate_json(line)
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise ConfigError(
            f"line {number}: {problem['msg']}",
            file=str(source),
            key=".".join(str(p) for p in problem["loc"]) or None,
            expected='{"id": ..., "text": ...}',
        ) from exc
