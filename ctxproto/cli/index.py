"""``ctxproto index DIR_OR_JSONL --store PATH``: build or update a retrieval store.

A folder contributes its ``.txt``, ``.md`` and ``.markdown`` files (document id =
path relative to the folder); a JSONL file contributes one document per line
(``{"id": ..., "text": ..., "metadata": {...}, "source": ...}``). Documents with
an id already in the store replace it. Every input is read and checked before
the store changes, and the store is saved atomically at the end, so a bad file
or an interrupted run leaves the previous store as it was.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError

__all__ = ["read_documents", "register"]

TEXT_SUFFIXES = (".txt", ".md", ".markdown")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build a retrieval store from a folder of text/markdown files or a JSONL file",
        description="Chunk, embed and store documents for the `retriever` stage.",
    )
    parser.add_argument("source", help="folder of .txt/.md files, or a .jsonl of documents")
    parser.add_argument("--store", required=True, help="store folder (created or updated)")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--overlap-tokens", type=int, default=32)
    parser.add_argument(
        "--index", choices=("auto", "flat", "hnsw", "ivf"), default="auto", help="FAISS index kind"
    )
    parser.add_argument("--embedder", default="default", help="embedding model (name or path)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ctxproto.embedder import get_embedder
    from ctxproto.retrieval import KnowledgeBase

    documents = list(read_documents(Path(args.source)))
    if not documents:
        raise ConfigError(
            "no documents found", file=args.source, expected="a .txt/.md file or JSONL"
        )
    knowledge_base = KnowledgeBase(
        args.store,
        embedder=get_embedder(args.embedder),
        chunk_tokens=args.chunk_tokens,
        overlap_tokens=args.overlap_tokens,
        kind=args.index,
    )
    start = time.perf_counter()
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]indexing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.json,
    ) as progress:
        task = progress.add_task("documents", total=len(documents))
        chunks = knowledge_base.add_documents(
            documents, on_progress=lambda n: progress.advance(task, n)
        )
    knowledge_base.save()
    seconds = time.perf_counter() - start
    summary = {
        "store": args.store,
        "documents": len(documents),
        "chunks": chunks,
        "store_documents": knowledge_base.store.count,
        "store_chunks": knowledge_base.store.chunk_count,
        "index_kind": knowledge_base.store.index.kind,
        "seconds": round(seconds, 3),
        "chunks_per_second": round(chunks / seconds, 1) if seconds > 0 else None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        Console().print(
            f"indexed {len(documents)} documents ({chunks} chunks) into {args.store} "
            f"in {seconds:.1f} s; the store holds {summary['store_documents']} documents, "
            f"{summary['store_chunks']} chunks ({summary['index_kind']} index)"
        )
    return 0


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
