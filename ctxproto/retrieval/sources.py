"""Reading documents to index: a folder of text files, one text file, or a JSONL file.

A folder contributes its ``.txt``, ``.md`` and ``.markdown`` files (document id =
path relative to the folder); one such file given alone is one document whose id
is its name, the id a file at the top of a folder has when the folder is indexed,
so that indexing one changed file of it replaces its document. A file deeper in
the folder has its path there as id (``sub/deep.md``), which its name alone is
not: ``file_id`` gives it, else the file would be stored again beside its old
version. Any other file is read as JSONL, one document per line
(``{"id": ..., "text": ..., "metadata": {...}, "source": ...}``).

Symbolic links never take the reader out of the folder unless asked: a link
``leak.md -> /etc/passwd`` in a shared folder would otherwise put that file
into a store that others query. A link whose target lies outside the folder,
a broken link and a link to a folder (never descended into) are skipped and
reported; ``follow_symlinks=True`` reads linked files wherever they point.

Hidden files and folders (a name starting with a dot) are skipped unless
``include_hidden=True``, as ripgrep and LlamaIndex's ``SimpleDirectoryReader``
skip them: a project folder's ``.pytest_cache/README.md``, ``.github/`` templates,
a ``.venv``'s licence files and ``.env.txt`` were indexed beside its documents
and retrieved as answers. A hidden file or folder that holds a text file is
reported once (``.venv``, not each file in it).

A UTF-8 byte order mark (Notepad and many Windows tools write one) is dropped:
kept, it hid the first markdown heading of a file (``\ufeff# Title`` is no
heading) and made the first line of a JSONL file invalid JSON.

Text files are read as UTF-8 unless ``encoding`` names another codec (as
Haystack's ``TextFileToDocument`` and LangChain's ``TextLoader`` take one); JSONL
is always UTF-8, as JSON between systems must be (RFC 8259). A folder's file that
cannot be read as text (another encoding, a binary file with a text suffix, one
deleted or made unreadable after the folder was listed) is skipped and given to
``on_unreadable``, with its id and the reason: one such file among thousands
stopped the whole run. A file holding a NUL is taken for binary: no text file
has one, and a UTF-16 file without its byte order mark is valid UTF-8 full of
them. Without ``on_unreadable``, and for a file given alone (the whole source),
it is a ``ConfigError`` naming the file.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

from pydantic import ValidationError

from ctxproto.documents import Document
from ctxproto.errors import ConfigError

__all__ = [
    "TEXT_SUFFIXES",
    "UnreadableFile",
    "check_encoding",
    "folder_document_id",
    "is_text_file",
    "read_documents",
]

TEXT_SUFFIXES = (".txt", ".md", ".markdown")


@dataclass(frozen=True)
class UnreadableFile:
    """A folder's text file that was skipped: it could not be read as text; or, with
    ``folder``, a folder inside it that could not be listed, every file in it skipped."""

    path: Path
    id: str
    """The id its document has in the store, kept there (a ``prune`` must not take it);
    for a folder, the prefix (before ``/``) of the ids of every document under it."""
    reason: str
    """Why, e.g. ``not UTF-8 text at byte 4 (0xe9)`` or ``cannot read: Permission denied``."""
    folder: bool = False


def is_text_file(source: Path) -> bool:
    """Whether ``source`` is one text file, read whole as one document."""
    return source.is_file() and source.suffix.lower() in TEXT_SUFFIXES


def folder_document_id(given: str, *, key: str = "file_id") -> str:
    """``given``, a path inside a folder, as the id indexing the folder gives its file.

    A folder's ids are relative paths with forward slashes and nothing before
    the first name (``_relative_id``): ``./sub/deep.md`` given as it is named the
    same file with another id, stored beside its old version. The path is read
    as this system reads paths, as the folder's were: ``sub\\deep.md`` is that
    folder's file on Windows, and a file of that name on POSIX, where ``\\`` and
    ``:`` are characters of a name. A path with ``..`` or from the root names no
    file of a folder, and is a ``ConfigError`` under ``key``.
    """
    path = PurePath(given)
    if path.anchor or ".." in path.parts or not path.parts:
        raise ConfigError(
            f"'{given}' is no path inside a folder",
            key=key,
            expected="the file's path in its folder, e.g. sub/deep.md, without '..'",
        )
    return _relative_id(PurePosixPath(*path.parts))


def _relative_id(relative: PurePath) -> str:
    """The id of a folder's file at ``relative``: its path there, with forward slashes."""
    return relative.as_posix()


def read_documents(
    source: Path,
    *,
    follow_symlinks: bool = False,
    on_skipped_link: Callable[[Path], None] | None = None,
    file_id: str | None = None,
    include_hidden: bool = False,
    on_skipped_hidden: Callable[[Path], None] | None = None,
    encoding: str = "utf-8",
    on_unreadable: Callable[[UnreadableFile], None] | None = None,
) -> Iterator[Document]:
    """Documents of a folder, a text file or a JSONL file; an unreadable one is a
    ``ConfigError`` naming it, unless a folder's and ``on_unreadable`` is given.

    ``on_skipped_link`` is called with each link the folder reader did not follow,
    ``on_skipped_hidden`` with each hidden file or folder holding a text file that
    it left out (a folder once); ``include_hidden`` reads them. ``on_unreadable``
    is called with each of the folder's text files that could not be read as text
    in ``encoding`` (``check_encoding``), which is then skipped.
    ``file_id`` is the id of a text file given alone (default: its name), its path
    in its folder written as the folder's ids are (``folder_document_id``);
    ignored for a folder or a JSONL file.
    """
    if source.is_dir():
        # Listed whole before any file is read: a file that goes, or turns unreadable,
        # while the others are read is skipped and told as such, whenever it happens.
        unlisted: list[OSError] = []
        files = list(
            _folder_files(
                source,
                follow_symlinks,
                include_hidden,
                on_skipped_link,
                on_skipped_hidden,
                unlisted.append,
            )
        )
        for error in unlisted:
            # Left out silently, its files read as deleted, and --prune deleted them.
            folder = Path(error.filename)
            why = f"cannot list the folder: {error.strerror or error}"
            if on_unreadable is None or folder == source:
                raise ConfigError(why, file=str(folder))
            relative = _relative_id(folder.relative_to(source))
            on_unreadable(UnreadableFile(folder, relative, why, folder=True))
        for path in files:
            relative = _relative_id(path.relative_to(source))
            try:
                text = _read_text(path, encoding)
            except ConfigError as exc:
                if on_unreadable is None:
                    raise
                on_unreadable(UnreadableFile(path, relative, exc.detail))
                continue
            yield Document(id=relative, text=text, source=relative)
    elif is_text_file(source):
        # Read as JSONL, a markdown file failed on its first line as "Invalid JSON".
        doc_id = source.name if file_id is None else folder_document_id(file_id)
        yield Document(id=doc_id, text=_read_text(source, encoding), source=doc_id)
    elif source.is_file():
        with source.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if number == 1:
                    line = line.removeprefix(codecs.BOM_UTF8)
                if line.strip():
                    yield _jsonl_document(line, source, number)
    else:
        raise ConfigError("no such file or folder", file=str(source))


def _folder_files(
    source: Path,
    follow_symlinks: bool,
    include_hidden: bool,
    on_skipped_link: Callable[[Path], None] | None,
    on_skipped_hidden: Callable[[Path], None] | None,
    on_unlisted: Callable[[OSError], None],
) -> Iterator[Path]:
    root = source.resolve()
    hidden_told: set[Path] = set()
    for path in sorted(_entries(source, on_unlisted)):
        if not include_hidden and (top := _hidden_top(path, source)) is not None:
            # Told once per hidden name, and only for one that held a text file: a
            # .git folder of objects is no document anyone meant to index.
            if path.suffix.lower() in TEXT_SUFFIXES and top not in hidden_told:
                hidden_told.add(top)
                if on_skipped_hidden is not None:
                    on_skipped_hidden(top)
            continue
        if not path.is_symlink():
            if path.suffix.lower() in TEXT_SUFFIXES and path.is_file():
                yield path
            continue
        target = path.resolve()
        if path.is_dir() or not path.is_file():
            followed = False  # a folder link (never descended into) or a broken link
        else:
            followed = follow_symlinks or target.is_relative_to(root)
        if followed:
            if path.suffix.lower() in TEXT_SUFFIXES:
                yield path
        elif on_skipped_link is not None:
            on_skipped_link(path)


def _entries(source: Path, on_unlisted: Callable[[OSError], None]) -> Iterator[Path]:
    """Every file, folder and link under ``source``, as ``rglob("*")`` gives them (links
    to folders listed, never descended into), and each folder that cannot be listed
    told to ``on_unlisted``, where ``rglob`` passes over it without a word."""
    for folder, folders, files in os.walk(source, onerror=on_unlisted):
        for name in (*folders, *files):
            yield Path(folder, name)


def _hidden_top(path: Path, source: Path) -> Path | None:
    """The first hidden file or folder on the way from ``source`` down to ``path``."""
    parts = path.relative_to(source).parts
    for depth, part in enumerate(parts, start=1):
        if part.startswith("."):
            return source.joinpath(*parts[:depth])
    return None


def check_encoding(encoding: str, *, key: str = "encoding") -> str:
    """``encoding`` when Python has a text codec of that name, else a ``ConfigError``."""
    try:
        codecs.lookup(encoding)
        "".encode(encoding)  # a LookupError for a codec of bytes to bytes, such as base64
    except (LookupError, UnicodeError):  # UnicodeError: 'undefined', which refuses all text
        raise ConfigError(
            f"'{encoding}' is no text encoding Python knows",
            key=key,
            expected="a codec name such as utf-8, latin-1, cp1252 or utf-16",
        ) from None
    return encoding


def _read_text(path: Path, encoding: str) -> str:
    """The text of ``path`` in ``encoding``; one that is not such text is a
    ``ConfigError`` naming it, and saying where.

    A Latin-1 or UTF-16 file is input to fix, not a broken store: it was a
    ``StoreError`` (exit 1), as if retrying could help. It is found while the
    sources are read, before the store is touched.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:  # gone, made unreadable or a folder since it was listed
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    utf8 = codecs.lookup(encoding).name == "utf-8"
    name = "UTF-8" if utf8 else encoding
    expected = (
        "UTF-8: save the file as UTF-8, or name its encoding with --encoding"
        if utf8
        else f"{encoding} text, as --encoding says"
    )
    try:
        text = data.decode("utf-8-sig" if utf8 else encoding)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not {name} text at byte {exc.start} (0x{data[exc.start]:02x})",
            file=str(path),
            expected=expected,
        ) from None
    if "\x00" in text:
        where = f"byte {data.index(0)}" if utf8 else f"character {text.index(chr(0))}"
        raise ConfigError(
            f"binary, not text: a NUL at {where}",
            file=str(path),
            expected="a text file (a UTF-16 file without a byte order mark reads "
            "with --encoding utf-16-le)",
        )
    return text


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
