"""``ctxproto index DIR_OR_JSONL --store PATH|URL``: build or update a retrieval store.

A folder contributes its ``.txt``, ``.md`` and ``.markdown`` files (document id =
path relative to the folder), one such file given alone itself (id = its name, or
``--id``: a file in a subfolder has its path there, ``sub/deep.md``, as id);
a JSONL file contributes one document per line
(``{"id": ..., "text": ..., "metadata": {...}, "source": ...}``). Documents with
an id already in the store replace it; one stored already as it is now is not
embedded again. Every input is read and checked before
the store changes, and the store is saved atomically at the end, so a bad file
or an interrupted run leaves the previous store as it was. The store folder is
checked for writing before any embedding starts; a run that changes nothing
(no document added, changed, emptied or pruned) saves nothing, so the store's
readers have no new generation to load. Runs into one store at the
same time all keep their documents (the store's writers serialise). A
``postgresql://…`` store is a pgvector table shared by every replica; its URL
is shown without its password.

Links that lead out of the source folder are skipped and listed unless
``--follow-symlinks`` is given; hidden files and folders (``.git``, ``.venv``,
``.pytest_cache``) are skipped, and listed when they hold a text file, unless
``--include-hidden`` is given. ``--prune`` deletes the stored documents the
source no longer holds (a file removed from the folder), in the same save; it
is refused with one file, which would delete every other document. An
empty file (or JSONL text), or one of markdown headings alone, is skipped and
listed, and its document, if stored, is deleted: a file being emptied must not
stop every other file from indexing; a source with nothing else is refused.

Text files are read as UTF-8, or as ``--encoding`` says. A folder's file that
cannot be read as text (another encoding, a binary file with a text suffix, one
deleted or made unreadable while the run went on) is skipped, and its stored
document kept as it was (``--prune`` keeps it too), as is every file of a folder
that cannot be listed (its documents kept too): one such file among
thousands stopped the whole run. Such files are listed last, each with its
reason, and counted in the summary's last line; the run still succeeds (exit 0)
when it indexed the rest. A file given alone that cannot be read is refused.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ctxproto._extras import require
from ctxproto.cli.arguments import int_at_least, non_blank
from ctxproto.cli.main import counted
from ctxproto.errors import ConfigError, StoreError
from ctxproto.retrieval import folder_document_id, is_text_file, read_documents
from ctxproto.retrieval.chunking import holds_text
from ctxproto.retrieval.sources import UnreadableFile, check_encoding
from ctxproto.stores.store_url import redact_url, store_location
from ctxproto.stores.vector_store import VectorStore

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build a retrieval store from a folder of text/markdown files or a JSONL file",
        description="Chunk, embed and store documents for the `retriever` stage.",
    )
    parser.add_argument(
        "source",
        type=non_blank,  # "" is the working directory: --prune would empty the store
        help="folder of .txt/.md files, one such file, or a .jsonl of documents",
    )
    parser.add_argument(
        "--store",
        required=True,
        type=non_blank,
        help="store folder or postgresql://USER@HOST/DB?table=NAME (created or updated)",
    )
    parser.add_argument(
        "--chunk-tokens",
        type=int_at_least(1),
        default=256,
        help="tokens per chunk at most (default: %(default)s)",
    )
    parser.add_argument(
        "--overlap-tokens",
        type=int_at_least(0),
        default=32,
        help="tokens a chunk repeats from the one before (default: %(default)s)",
    )
    parser.add_argument(
        "--index",
        choices=("auto", "flat", "hnsw", "ivf"),
        default="auto",
        help="FAISS index kind (a PostgreSQL store builds HNSW past 20k chunks)",
    )
    parser.add_argument(
        "--embedder",
        default="default",
        help="embedding model, a name or a path (default: the bundled all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read linked files that point outside the source folder (skipped by default)",
    )
    parser.add_argument(
        "--include-hidden",
        action="store_true",
        help="read hidden files and folders (.name), skipped by default",
    )
    parser.add_argument(
        "--encoding",
        metavar="NAME",
        help="the encoding of the .txt/.md files, e.g. latin-1, cp1252, utf-16 "
        "(default: utf-8; JSONL is always UTF-8)",
    )
    parser.add_argument(
        "--id",
        dest="file_id",
        metavar="ID",
        help="the document id of one .txt/.md file (default: its name); to replace a file "
        "indexed with its folder, its path there, e.g. sub/deep.md",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="delete stored documents the source no longer holds (a store of this source "
        "alone; not with one file)",
    )
    parser.add_argument(
        "--reembed",
        action="store_true",
        help="embed every document again, stored unchanged or not (after the embedding "
        "model's weights changed under the same name)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ctxproto.models.embedder import get_embedder
    from ctxproto.retrieval import KnowledgeBase

    if args.overlap_tokens >= args.chunk_tokens:
        raise ConfigError(
            f"must be smaller than --chunk-tokens ({args.chunk_tokens})", key="--overlap-tokens"
        )
    if not Path(args.source).exists():  # before the checks that read what it is
        raise ConfigError("no such file or folder", file=args.source)
    single = is_text_file(Path(args.source))
    if args.prune and single:
        raise ConfigError(
            "with one file, it would delete every other stored document",
            key="--prune",
            expected="the folder the file is in, to prune what the folder no longer holds",
        )
    if args.file_id is not None and not (single and args.file_id.strip()):
        raise ConfigError(
            "names the document of one .txt/.md file; a folder or JSONL file gives its ids",
            key="--id",
            expected="a source that is one .txt/.md file, and an id that is not blank",
        )
    if args.file_id is not None:
        args.file_id = folder_document_id(args.file_id, key="--id")
    if args.encoding is not None:
        check_encoding(args.encoding, key="--encoding")
        if not (single or Path(args.source).is_dir()):
            raise ConfigError(
                "names the encoding of .txt/.md files; JSONL is UTF-8, as JSON is",
                key="--encoding",
                expected="a folder or one .txt/.md file as the source",
            )
    # A missing extra is found before anything is written, the store folder included.
    on_server = _on_server(args.store)
    require("sentence_transformers", extra="embed")
    if on_server:
        for module in ("psycopg", "psycopg_pool"):
            require(module, extra="postgres")
    else:
        require("faiss", extra="embed")
    skipped_links: list[str] = []
    skipped_hidden: list[str] = []
    unreadable: list[UnreadableFile] = []
    documents = list(
        read_documents(
            Path(args.source),
            follow_symlinks=args.follow_symlinks,
            on_skipped_link=lambda path: skipped_links.append(str(path)),
            file_id=args.file_id,
            include_hidden=args.include_hidden,
            on_skipped_hidden=lambda path: skipped_hidden.append(str(path)),
            encoding=args.encoding or "utf-8",
            on_unreadable=unreadable.append,
        )
    )
    console = Console(stderr=True, highlight=False)
    # Followed, links are skipped only when broken or naming a folder: the option that
    # reads links out of the folder is no fix then, and it is offered only without it.
    why = (
        "it is broken or names a folder"
        if args.follow_symlinks
        else "it leads out of the folder, is broken or names a folder "
        "(--follow-symlinks reads linked files)"
    )
    for link in skipped_links:
        console.print(
            f"skipped link {link}: {why}",
            markup=False,
            soft_wrap=True,  # one line, however long the path: a line a script can read
        )
    for hidden in skipped_hidden:
        console.print(
            f"skipped hidden {hidden}: --include-hidden reads hidden files and folders",
            markup=False,
            soft_wrap=True,
        )
    if not documents:
        _tell_unreadable(console, unreadable)
        raise ConfigError(
            "no documents found", file=args.source, expected="a .txt/.md file or JSONL"
        )
    # One id twice in a JSONL source: the later line replaces the earlier one, as a
    # document replaces its stored version, and counts once.
    counts = Counter(d.id for d in documents)
    repeated = sorted(doc_id for doc_id, count in counts.items() if count > 1)
    documents = list({d.id: d for d in documents}.values())
    # An empty file, or one of headings alone (they are the metadata of the chunks
    # under them, so no chunk holds them), is a document with nothing to retrieve, not
    # a broken input: it is skipped, and what it held before is deleted, as a document
    # replaced by nothing. A folder or JSONL source with nothing else is refused before
    # the store changes; one file emptied is how its stored document is taken out.
    hollow = {d.id: d for d in documents if not holds_text(d.text)}
    emptied = list(hollow)
    headings_only = {doc_id for doc_id, d in hollow.items() if d.text.strip()}
    documents = [d for d in documents if d.id not in hollow]
    if not documents and not single:
        _tell_unreadable(console, unreadable)
        raise ConfigError(
            "no document holds text to index (only empty files or headings)",
            file=args.source,
            expected="a .txt/.md file or JSONL with text besides headings",
        )
    if not on_server:
        try:
            VectorStore.ensure_writable(Path(args.store))
        except StoreError as exc:
            raise ConfigError(
                str(exc), key="--store", expected="a folder this user can write"
            ) from exc
    for doc_id in repeated:
        console.print(
            f"{doc_id} appears {counts[doc_id]} times in the source: the last one is indexed",
            markup=False,
            soft_wrap=True,
        )
    for doc_id in emptied:  # said once the store is known to take the deletion
        held = "only headings, no text under them" if doc_id in headings_only else "no text"
        console.print(
            f"skipped {doc_id}: it holds {held} (what it held before is deleted)",
            markup=False,
            soft_wrap=True,
        )
    knowledge_base = KnowledgeBase(
        args.store,
        embedder=get_embedder(args.embedder),
        chunk_tokens=args.chunk_tokens,
        overlap_tokens=args.overlap_tokens,
        kind=args.index,
    )
    start = time.perf_counter()
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
            documents, on_progress=lambda n: progress.advance(task, n), reembed=args.reembed
        )
    removed = knowledge_base.delete(emptied)
    # A file skipped as unreadable is still in the source: its document stays stored.
    kept = {d.id for d in documents} | {s.id for s in unreadable if not s.folder}
    unlisted = [skipped.id for skipped in unreadable if skipped.folder]
    pruned = knowledge_base.prune(kept, keep_under=unlisted) if args.prune else []
    # A run that changed nothing writes nothing: a save makes a new generation, and
    # every running reader (a proxy's retriever) then loads the whole store again.
    saved = bool(chunks or removed or pruned)
    if saved:
        knowledge_base.save()
    seconds = time.perf_counter() - start
    shown = redact_url(args.store)
    summary = {
        "store": shown,
        "documents": len(documents),
        "chunks": chunks,
        "unchanged_documents": knowledge_base.unchanged_documents,
        "store_documents": knowledge_base.store.count,
        "store_chunks": knowledge_base.store.chunk_count,
        "index_kind": knowledge_base.store.index_kind,
        "seconds": round(seconds, 3),
        "chunks_per_second": round(chunks / seconds, 1) if seconds > 0 else None,
        "skipped_links": skipped_links,
        "skipped_hidden": skipped_hidden,
        "skipped_empty": emptied,
        "skipped_unreadable": [
            {"path": str(skipped.path), "reason": skipped.reason} for skipped in unreadable
        ],
        "repeated_ids": repeated,
        "chunks_past_embedder_window": knowledge_base.chunks_past_window,
        "embedder_window_tokens": knowledge_base.embedder.window_tokens,
        "pruned": pruned,
        "saved": saved,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        console = Console()  # one line each, so none wraps mid-figure at 80 columns
        console.print(
            f"indexed {counted(len(documents), 'document')} ({counted(chunks, 'chunk')}) "
            f"in {seconds:.1f} s"
        )
        console.print(f"into {escape(shown)}")
        if knowledge_base.unchanged_documents:
            unchanged = knowledge_base.unchanged_documents
            console.print(f"{unchanged} of them unchanged since stored: not embedded again")
        if pruned:
            console.print(f"deleted {counted(len(pruned), 'document')} the source no longer holds")
        if not saved:
            console.print("nothing changed: the store was left as it was, not saved again")
        if unreadable:
            what, why = _unreadable(unreadable)
            console.print(f"skipped {what} {why} (listed on stderr)")
        if knowledge_base.chunks_past_window:
            past = knowledge_base.chunks_past_window
            verb = "is" if past == 1 else "are"
            console.print(
                f"{past} of {counted(chunks, 'chunk')} {verb} longer than the "
                f"embedder reads ({knowledge_base.embedder.window_tokens} of its tokens): "
                "only their start is embedded; a smaller --chunk-tokens fits them",
                markup=False,
            )
        console.print(
            f"the store holds {counted(knowledge_base.store.count, 'document')}, "
            f"{counted(knowledge_base.store.chunk_count, 'chunk')} ({summary['index_kind']} index)"
        )
    _tell_unreadable(Console(stderr=True, highlight=False), unreadable)
    return 0


def _unreadable(unreadable: list[UnreadableFile]) -> tuple[str, str]:
    """What was skipped and why: ``("2 files", "not readable as text")``, or with a
    folder that could not be listed (its files counted in it) ``"... not readable"``."""
    folders = sum(skipped.folder for skipped in unreadable)
    parts = ((len(unreadable) - folders, "file"), (folders, "folder"))
    what = " and ".join(counted(n, noun) for n, noun in parts if n)
    return what, "not readable" if folders else "not readable as text"


def _tell_unreadable(console: Console, unreadable: list[UnreadableFile]) -> None:
    """The files skipped as unreadable, last, so that no progress bar or summary hides
    them: one line each, then one line counting them and saying what reads them."""
    if not unreadable:
        return
    what, why = _unreadable(unreadable)
    for skipped in unreadable:
        console.print(
            f"skipped unreadable {skipped.path}: {skipped.reason}", markup=False, soft_wrap=True
        )
    console.print(
        f"{what} not indexed, listed above: {why} "
        "(their stored documents are kept); --encoding NAME reads another encoding",
        markup=False,
        soft_wrap=True,
    )


def _on_server(store: str) -> bool:
    """Whether ``--store`` names a PostgreSQL table; a folder otherwise, and nothing else."""
    try:
        kind = store_location(store)
    except ConfigError as exc:
        raise ConfigError(exc.detail, key="--store", expected=exc.expected) from None
    if kind == "redis":
        raise ConfigError(
            "a Redis server holds caches and sessions, not retrieval stores",
            key="--store",
            expected="a folder or a postgresql:// URL",
        )
    return kind == "postgresql"
