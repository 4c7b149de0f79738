"""``ctxproto index``: the store is checked before the work, links stay in the folder,
and concurrent runs into one store keep every document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ctxproto.cli.main import main
from ctxproto.retrieval import KnowledgeBase
from tests.conftest import Unprivileged

ROOT = Path(__file__).resolve().parents[2]
MISSING_EMBEDDER = "/no/such/embedder"  # loading it would fail: shows the check came first


def _folder(path: Path, names: list[str]) -> Path:
    path.mkdir(parents=True)
    for name in names:
        (path / f"{name}.md").write_text(f"# {name}\n\nNotes about {name} and nothing else.")
    return path


def test_a_link_out_of_the_folder_is_skipped_and_reported(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    folder = _folder(tmp_path / "kb", ["apples"])
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET-LINE")
    (folder / "leak.md").symlink_to(secret)
    (folder / "inside.md").symlink_to(folder / "apples.md")
    store = tmp_path / "store"
    assert main(["index", str(folder), "--store", str(store), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["store_documents"] == 2  # apples.md and the link that stays inside
    assert summary["skipped_links"] == [str(folder / "leak.md")]
    assert "leak.md" in captured.err
    texts = [d.text for d in KnowledgeBase(store, embedder=embedder).query("root", k=5)]
    assert not any("SECRET" in text for text in texts)
    assert main(["index", str(folder), "--store", str(store), "--follow-symlinks", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["store_documents"] == 3


def test_a_store_path_that_is_a_file_fails_before_any_work(tmp_path: Path, capsys: Any) -> None:
    folder = _folder(tmp_path / "kb", ["apples"])
    not_a_folder = tmp_path / "store"
    not_a_folder.write_text("a file")
    code = main(
        ["index", str(folder), "--store", str(not_a_folder), "--embedder", MISSING_EMBEDDER]
    )
    assert code == 2
    assert "--store" in capsys.readouterr().err
    assert not_a_folder.read_text() == "a file"


READ_ONLY_INDEX = "import sys; from ctxproto.cli.main import main; sys.exit(main(sys.argv[1:]))"


def test_a_read_only_store_folder_fails_before_any_work(unprivileged: Unprivileged) -> None:
    folder = _folder(unprivileged.folder / "kb", ["apples"])
    store = unprivileged.folder / "store"
    store.mkdir()
    unprivileged.make_read_only(unprivileged.folder)
    result = unprivileged.run(
        READ_ONLY_INDEX, "index", str(folder), "--store", str(store), "--embedder", MISSING_EMBEDDER
    )
    assert result.returncode == 2, result.stderr
    assert "--store" in result.stderr and str(store) in result.stderr


@pytest.mark.models
@pytest.mark.parametrize("backend", ["faiss", "pgvector"])
def test_two_runs_into_one_store_at_once_keep_every_document(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """On PostgreSQL both runs also race to create the new store's table."""
    first = _folder(tmp_path / "a", [f"alpha{i}" for i in range(5)])
    second = _folder(tmp_path / "b", [f"beta{i}" for i in range(5)])
    store = str(tmp_path / "store") if backend == "faiss" else request.getfixturevalue("pg_url")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "ctxproto.cli", "index", str(source), "--store", store],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for source in (first, second)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    assert KnowledgeBase(store).store.count == 10


def test_an_index_on_postgresql_is_retrieved_by_a_pipeline_naming_its_url(
    tmp_path: Path, capsys: Any, embedder: Any, postgres: Any
) -> None:
    from ctxproto.context import Context
    from ctxproto.messages import Message
    from ctxproto.pipeline import Pipeline

    folder = _folder(tmp_path / "kb", ["apples", "volcanoes", "violins"])
    url = f"postgresql://postgres:pw-not-shown@127.0.0.1:{postgres.port}/postgres?table=cli_kb"
    assert main(["index", str(folder), "--store", url, "--json"]) == 0
    out = capsys.readouterr().out
    assert "pw-not-shown" not in out
    summary = json.loads(out)
    assert summary["store_documents"] == 3 and summary["store"].startswith(
        "postgresql://postgres:***@"
    )
    config = tmp_path / "rag.yaml"
    config.write_text(
        "stages:\n  - type: retriever\n    init_parameters:\n"
        f"      store: {url}\n      k: 1\n      diversity: 0\n"
    )
    result = Pipeline.from_yaml(config).run(
        Context(query=Message(role="user", content="Tell me about volcanoes"))
    )
    assert [d.metadata["doc_id"] for d in result.context.documents] == ["volcanoes.md"]


def test_a_pipeline_naming_a_postgresql_store_that_was_never_built_is_a_config_error(
    tmp_path: Path, postgres: Any
) -> None:
    from ctxproto.context import Context
    from ctxproto.errors import ConfigError
    from ctxproto.messages import Message
    from ctxproto.pipeline import Pipeline

    url = f"postgresql://postgres:pw-not-shown@127.0.0.1:{postgres.port}/postgres?table=never"
    pipeline = Pipeline.from_dict(
        {"stages": [{"type": "retriever", "init_parameters": {"store": url}}]}, source="rag.yaml"
    )
    with pytest.raises(ConfigError, match="no store at postgresql://postgres:\\*\\*\\*@") as info:
        pipeline.run(Context(query=Message(role="user", content="anything")))
    assert "pw-not-shown" not in str(info.value)


@pytest.mark.parametrize("backend", ["faiss", "pgvector"])
def test_prune_deletes_what_the_source_no_longer_holds(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: Any, embedder: Any, backend: str
) -> None:
    """A file deleted from the folder kept being retrieved after every re-index."""
    folder = _folder(tmp_path / "kb", ["apples", "volcanoes"])
    store = str(tmp_path / "store") if backend == "faiss" else request.getfixturevalue("pg_url")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    (folder / "volcanoes.md").unlink()
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["store_documents"] == 2 and summary["pruned"] == []
    assert main(["index", str(folder), "--store", store, "--prune", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["store_documents"] == 1 and summary["pruned"] == ["volcanoes.md"]
    knowledge_base = KnowledgeBase(store, embedder=embedder)
    try:
        found = knowledge_base.query("Tell me about volcanoes", k=5)
        assert [d.metadata["doc_id"] for d in found] == ["apples.md"]
    finally:
        knowledge_base.close()


def test_an_emptied_file_is_skipped_and_its_old_chunks_deleted(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """One empty file (a placeholder, a file being rewritten) stopped every file indexing."""
    folder = _folder(tmp_path / "kb", ["apples", "volcanoes"])
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    (folder / "volcanoes.md").write_text("  \n")
    (folder / "comets.md").write_text("# comets\n\nNotes about comets and nothing else.")
    capsys.readouterr()
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["skipped_empty"] == ["volcanoes.md"] and summary["documents"] == 2
    assert summary["store_documents"] == 2  # apples and comets
    assert "skipped volcanoes.md" in captured.err
    knowledge_base = KnowledgeBase(store, embedder=embedder)
    try:
        found = {d.metadata["doc_id"] for d in knowledge_base.query("volcanoes", k=5)}
        assert found == {"apples.md", "comets.md"}
    finally:
        knowledge_base.close()


def test_a_file_of_headings_alone_is_skipped_and_the_others_indexed(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """A stub ``# one`` yields no chunk (headings are the metadata of the text under
    them), and the whole run failed with "document has no chunks to add", exit 1."""
    folder = _folder(tmp_path / "kb", ["apples", "volcanoes"])
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    (folder / "volcanoes.md").write_text("# volcanoes\n\n## Etna\n")
    (folder / "one.md").write_text("# one")
    capsys.readouterr()
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["skipped_empty"] == ["one.md", "volcanoes.md"] and summary["documents"] == 1
    assert summary["store_documents"] == 1  # apples; volcanoes' old chunks are deleted
    err = captured.err.replace("\n", "")
    assert "skipped one.md: it holds only headings, no text under them" in err


def test_a_source_with_nothing_to_index_exits_2_naming_it_and_leaves_the_store_as_it_was(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """A folder of files of headings alone failed with a StoreError (exit 1), as if the
    store were broken; a folder of empty files indexed nothing and said "indexed 0
    documents"."""
    folder = _folder(tmp_path / "kb", ["apples"])
    store = tmp_path / "store"
    assert main(["index", str(folder), "--store", str(store), "--json"]) == 0
    before = {path.name: path.read_bytes() for path in store.iterdir()}
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "one.md").write_text("# one")
    (stubs / "blank.txt").write_text("\n")
    capsys.readouterr()
    code = main(["index", str(stubs), "--store", str(store), "--embedder", MISSING_EMBEDDER])
    assert code == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"{stubs}: no document holds text to index" in err
    assert {path.name: path.read_bytes() for path in store.iterdir()} == before


def test_one_file_emptied_and_indexed_alone_takes_its_document_out_of_the_store(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """Indexing one changed file replaces its document; emptied (or cut to headings),
    it was refused with exit 2, and the store kept serving what it used to say."""
    folder = _folder(tmp_path / "kb", ["apples", "volcanoes"])
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    (folder / "volcanoes.md").write_text("# volcanoes\n")
    capsys.readouterr()
    assert main(["index", str(folder / "volcanoes.md"), "--store", store, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_empty"] == ["volcanoes.md"]
    assert summary["documents"] == 0 and summary["store_documents"] == 1


def test_one_markdown_file_is_indexed_as_its_folder_would_index_it(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """A ``.md`` file given alone was read as JSONL and refused as "Invalid JSON" on
    its first line, although the error for an empty source asks for such a file."""
    folder = _folder(tmp_path / "kb", ["apples", "volcanoes"])
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    (folder / "volcanoes.md").write_text("# volcanoes\n\nEtna erupted in 2021.")
    capsys.readouterr()
    assert main(["index", str(folder / "volcanoes.md"), "--store", store, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 1
    assert summary["store_documents"] == 2  # the folder's volcanoes.md, replaced
    knowledge_base = KnowledgeBase(store, embedder=embedder)
    try:
        (found,) = knowledge_base.query("When did Etna erupt?", k=1)
        assert found.metadata["doc_id"] == "volcanoes.md" and "2021" in found.text
    finally:
        knowledge_base.close()


def test_prune_with_one_file_exits_2_naming_it_and_leaves_the_store_as_it_was(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """The one file was the whole source, so every other document was deleted."""
    folder = _folder(tmp_path / "kb", ["apples", "volcanoes"])
    store = tmp_path / "store"
    assert main(["index", str(folder), "--store", str(store), "--json"]) == 0
    before = {path.name: path.read_bytes() for path in store.iterdir()}
    capsys.readouterr()
    code = main(["index", str(folder / "apples.md"), "--store", str(store), "--prune"])
    assert code == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "--prune" in err and "would delete every other stored document" in err
    assert {path.name: path.read_bytes() for path in store.iterdir()} == before


def test_a_nested_file_given_alone_with_its_folder_path_as_id_replaces_its_document(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """Given alone, sub/volcanoes.md was stored as "volcanoes.md" beside the folder's
    "sub/volcanoes.md", and its old text kept being retrieved."""
    folder = _folder(tmp_path / "kb", ["apples"])
    _folder(folder / "sub", ["volcanoes"])
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    nested = folder / "sub" / "volcanoes.md"
    nested.write_text("# volcanoes\n\nEtna erupted in 2021.")
    capsys.readouterr()
    assert main(["index", str(nested), "--store", store, "--id", "sub/volcanoes.md"]) == 0
    assert main(["index", str(folder), "--store", store, "--id", "x.md"]) == 2  # not a file
    assert "--id" in capsys.readouterr().err
    knowledge_base = KnowledgeBase(store, embedder=embedder)
    try:
        assert knowledge_base.store.count == 2
        (found,) = knowledge_base.query("When did Etna erupt?", k=1)
        assert found.metadata["doc_id"] == "sub/volcanoes.md" and "2021" in found.text
    finally:
        knowledge_base.close()


SEPARATED = ["./sub/volcanoes.md", "sub//volcanoes.md", "sub/./volcanoes.md"]


@pytest.mark.parametrize("given", SEPARATED + (["sub\\volcanoes.md"] if os.name == "nt" else []))
def test_an_id_is_written_as_the_folder_writes_its_ids(
    tmp_path: Path, capsys: Any, embedder: Any, given: str
) -> None:
    """``./sub/volcanoes.md`` (or ``sub\\volcanoes.md`` on Windows) was stored as it was
    written, beside the folder's ``sub/volcanoes.md``, whose old text kept being
    retrieved."""
    folder = _folder(tmp_path / "kb", ["apples"])
    _folder(folder / "sub", ["volcanoes"])
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    nested = folder / "sub" / "volcanoes.md"
    nested.write_text("# volcanoes\n\nEtna erupted in 2021.")
    assert main(["index", str(nested), "--store", store, "--id", given]) == 0
    knowledge_base = KnowledgeBase(store, embedder=embedder)
    try:
        assert knowledge_base.store.count == 2
        (found,) = knowledge_base.query("When did Etna erupt?", k=1)
        assert found.metadata["doc_id"] == "sub/volcanoes.md" and "2021" in found.text
    finally:
        knowledge_base.close()


@pytest.mark.skipif(os.name == "nt", reason="a backslash separates names on Windows")
def test_a_file_named_with_a_backslash_keeps_the_id_its_folder_gives_it(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """On POSIX ``a\\b.md`` and ``c:d.md`` are names of files; ``--id`` read them as a
    folder and a file, and as a drive, unlike the folder that holds them."""
    folder = tmp_path / "kb"
    folder.mkdir()
    for name in ("a\\b.md", "c:d.md"):
        (folder / name).write_text("Rivers flow to the sea.")
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    for name in ("a\\b.md", "c:d.md"):
        (folder / name).write_text("Etna erupted in 2021.")
        assert main(["index", str(folder / name), "--store", store, "--id", name]) == 0
    capsys.readouterr()
    knowledge_base = KnowledgeBase(store, embedder=embedder)
    try:
        assert knowledge_base.store.count == 2
    finally:
        knowledge_base.close()


@pytest.mark.parametrize("given", ["../volcanoes.md", "sub/../../x.md", "/etc/volcanoes.md"])
def test_an_id_out_of_the_folder_is_refused(tmp_path: Path, capsys: Any, given: str) -> None:
    """Stored as written, it was an id no folder gives a file."""
    nested = _folder(tmp_path / "kb", ["volcanoes"]) / "volcanoes.md"
    store = tmp_path / "store"
    capsys.readouterr()
    assert main(["index", str(nested), "--store", str(store), "--id", given]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "--id" in err and "no path inside a folder" in err
    assert not store.exists()


def test_a_missing_file_with_an_id_is_said_to_be_missing(tmp_path: Path, capsys: Any) -> None:
    """It was refused as "a folder or JSONL file gives its ids", as if it were one."""
    missing = tmp_path / "missing.md"
    assert main(["index", str(missing), "--store", str(tmp_path / "s"), "--id", "x.md"]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "no such file or folder" in err and "gives its ids" not in err


def test_an_id_repeated_in_a_jsonl_source_is_indexed_once_as_its_last_line(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """The report counted both copies, while the store kept one."""
    source = tmp_path / "docs.jsonl"
    lines = [
        {"id": "a", "text": "The old warranty lasts one year."},
        {"id": "b", "text": "Volcanoes erupt molten rock."},
        {"id": "a", "text": "The warranty lasts two years from delivery."},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), "utf-8")
    store = str(tmp_path / "store")
    assert main(["index", str(source), "--store", store, "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["documents"] == 2 == summary["store_documents"]
    assert summary["chunks"] == summary["store_chunks"] == 2
    assert summary["repeated_ids"] == ["a"] and "a appears 2 times" in captured.err
    knowledge_base = KnowledgeBase(store, embedder=embedder)
    try:
        (hit,) = knowledge_base.query("how long is the warranty?", k=1)
        assert hit.text == "The warranty lasts two years from delivery."
    finally:
        knowledge_base.close()


def test_chunks_longer_than_the_embedder_reads_are_counted_and_said(
    tmp_path: Path, capsys: Any
) -> None:
    """Chunks are sized in the pipeline's tokens; the embedder reads 256 of its own and
    silently left the rest of a longer chunk unembedded."""
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "codes.md").write_text(  # identifiers: many more of the embedder's tokens
        " ".join(f"ERR-{n:05d}-X{n % 7}Q" for n in range(200)) + "\n", "utf-8"
    )
    (folder / "short.md").write_text("Returns are accepted within 30 days.\n", "utf-8")
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedder_window_tokens"] == 256
    assert 1 <= summary["chunks_past_embedder_window"] < summary["chunks"]
    assert main(["index", str(folder), "--store", store, "--chunk-tokens", "64"]) == 0
    out = capsys.readouterr().out
    assert "longer than the embedder reads" not in out  # small chunks fit
    assert main(["index", str(folder), "--store", store]) == 0
    assert "longer than the embedder reads (256 of its tokens)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "data"),
    [("latin1.txt", "Café notes.".encode("latin-1")), ("utf16.md", "Notes.".encode("utf-16"))],
    ids=["latin-1", "utf-16"],
)
def test_a_file_not_in_utf8_given_alone_exits_2_naming_it_and_leaves_the_store_as_it_was(
    tmp_path: Path, capsys: Any, embedder: Any, name: str, data: bytes
) -> None:
    """It was a StoreError (exit 1), as if the store were broken, for input to fix.
    In a folder it is skipped and listed (the next test); given alone it is the whole
    source, and refused."""
    folder = _folder(tmp_path / "kb", ["apples"])
    store = tmp_path / "store"
    assert main(["index", str(folder), "--store", str(store), "--json"]) == 0
    before = {path.name: path.read_bytes() for path in store.iterdir()}
    (folder / name).write_bytes(data)
    capsys.readouterr()
    for into in (store, tmp_path / "new-store"):
        code = main(
            ["index", str(folder / name), "--store", str(into), "--embedder", MISSING_EMBEDDER]
        )
        assert code == 2
        err = capsys.readouterr().err.replace("\n", "")
        assert (
            f"{folder / name}: not UTF-8 text at byte " in err and "save the file as UTF-8" in err
        )
    assert {path.name: path.read_bytes() for path in store.iterdir()} == before
    assert not (tmp_path / "new-store").exists()


def test_a_folders_file_that_is_no_utf8_text_is_skipped_and_listed_last_and_kept_stored(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """One Latin-1 file among thousands stopped the whole run (exit 2, nothing indexed).
    Now each file that is not text is skipped with its reason, listed after everything
    else, its stored document kept (by --prune too), and the run succeeds."""
    folder = _folder(tmp_path / "kb", ["apples", "menu"])
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    capsys.readouterr()
    (folder / "menu.md").write_bytes("# menu\n\nCafé crème and croissants.".encode("latin-1"))
    (folder / "logo.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")  # binary
    (folder / "wide.txt").write_bytes("Notes in UTF-16.".encode("utf-16-le"))  # no BOM
    (folder / "volcanoes.md").write_text("# volcanoes\n\nVolcanoes erupt molten basalt.")
    assert main(["index", str(folder), "--store", store, "--prune", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["skipped_unreadable"] == [
        {"path": str(folder / "logo.md"), "reason": "not UTF-8 text at byte 0 (0x89)"},
        {"path": str(folder / "menu.md"), "reason": "not UTF-8 text at byte 11 (0xe9)"},
        {"path": str(folder / "wide.txt"), "reason": "binary, not text: a NUL at byte 1"},
    ]
    # volcanoes.md indexed; menu.md's stored version neither pruned nor replaced.
    assert summary["documents"] == 2 and summary["pruned"] == []
    assert summary["store_documents"] == 3
    last = captured.err.strip().splitlines()[-4:]
    assert last == [
        f"skipped unreadable {folder / 'logo.md'}: not UTF-8 text at byte 0 (0x89)",
        f"skipped unreadable {folder / 'menu.md'}: not UTF-8 text at byte 11 (0xe9)",
        f"skipped unreadable {folder / 'wide.txt'}: binary, not text: a NUL at byte 1",
        "3 files not indexed, listed above: not readable as text (their stored documents "
        "are kept); --encoding NAME reads another encoding",
    ]
    # Read as Latin-1, menu.md is text; the others are still no text in it.
    assert main(["index", str(folder), "--store", store, "--encoding", "latin-1"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 files not readable as text (listed on stderr)" in captured.out
    assert "binary, not text: a NUL at character 8" in captured.err  # logo.md
    (found,) = KnowledgeBase(store, embedder=embedder).query("café crème", k=1)
    assert found.source == "menu.md" and "Café crème" in found.text


def test_a_folder_that_cannot_be_listed_is_skipped_and_its_documents_kept_by_prune(
    tmp_path: Path, capsys: Any, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing passed over a folder it was not allowed to read without a word, so
    its files looked deleted and --prune deleted their stored documents."""
    import os

    folder = _folder(tmp_path / "kb", ["apples"])
    _folder(folder / "team", ["rota", "holidays"])
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    capsys.readouterr()
    real_walk = os.walk

    def walk_denying_team(top: Any, onerror: Any = None, **kwargs: Any) -> Any:
        """``os.walk`` as it goes for a user who may not list ``team``."""
        for entry in real_walk(top, onerror=onerror, **kwargs):
            if Path(entry[0]).name == "team":
                onerror(PermissionError(13, "Permission denied", entry[0]))
                continue
            yield entry

    monkeypatch.setattr(os, "walk", walk_denying_team)
    assert main(["index", str(folder), "--store", store, "--prune", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["pruned"] == [] and summary["store_documents"] == 3
    assert summary["skipped_unreadable"] == [
        {"path": str(folder / "team"), "reason": "cannot list the folder: Permission denied"}
    ]
    assert captured.err.strip().splitlines()[-1] == (
        "1 folder not indexed, listed above: not readable (their stored documents are "
        "kept); --encoding NAME reads another encoding"
    )


def test_the_encoding_option_is_checked_before_any_work(tmp_path: Path, capsys: Any) -> None:
    folder = _folder(tmp_path / "kb", ["apples"])
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"id": "a", "text": "One."}\n')
    for source, encoding, said in (
        (folder, "klingon", "'klingon' is no text encoding"),
        (folder, "base64", "'base64' is no text encoding"),
        (folder, "undefined", "'undefined' is no text encoding"),  # a codec that refuses all
        (jsonl, "latin-1", "JSONL is UTF-8, as JSON is"),
    ):
        store = str(tmp_path / "store")
        arguments = ["--store", store, "--encoding", encoding, "--embedder", MISSING_EMBEDDER]
        code = main(["index", str(source), *arguments])
        assert code == 2
        err = capsys.readouterr().err.replace("\n", "")
        assert "--encoding" in err and said in err
    assert not (tmp_path / "store").exists()


def test_the_summary_counts_one_document_as_one_and_a_followed_link_is_not_offered_the_option(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """One file printed "indexed 1 documents (1 chunks)", and a broken link skipped
    with --follow-symlinks given still ended "(--follow-symlinks reads linked files)"."""
    folder = _folder(tmp_path / "kb", ["apples"])
    (folder / "broken.md").symlink_to(tmp_path / "gone.md")
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--follow-symlinks"]) == 0
    captured = capsys.readouterr()
    err = captured.err.replace("\n", "")
    assert f"skipped link {folder / 'broken.md'}: it is broken or names a folder" in err
    assert "--follow-symlinks reads" not in err
    out = " ".join(captured.out.split())
    assert "indexed 1 document (1 chunk) in" in out
    assert "the store holds 1 document, 1 chunk (flat index)" in out
    assert main(["index", str(folder), "--store", store]) == 0
    assert "(--follow-symlinks reads linked files)" in capsys.readouterr().err.replace("\n", "")


def test_hidden_files_and_folders_are_skipped_and_listed_unless_asked_for(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """A project folder's .pytest_cache/README.md, a .venv's licence files and
    .env.txt were indexed beside its documents, and retrieved as answers."""
    folder = _folder(tmp_path / "kb", ["apples"])
    (folder / ".pytest_cache").mkdir()
    (folder / ".pytest_cache" / "README.md").write_text("This directory holds pytest's cache.")
    (folder / ".venv" / "lib").mkdir(parents=True)
    (folder / ".venv" / "lib" / "LICENSE.txt").write_text("Permission is hereby granted.")
    (folder / ".venv" / "lib64").symlink_to(tmp_path)  # a link no one meant to index either
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main")  # no text file: not listed
    (folder / ".env.txt").write_text("API_KEY=SECRET-VALUE")
    store = str(tmp_path / "store")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["store_documents"] == 1 and summary["skipped_links"] == []
    assert summary["skipped_hidden"] == [
        str(folder / name) for name in (".env.txt", ".pytest_cache", ".venv")
    ]
    assert f"skipped hidden {folder / '.venv'}: --include-hidden reads" in captured.err
    knowledge_base = KnowledgeBase(store, embedder=embedder)
    assert not any("SECRET" in d.text for d in knowledge_base.query("API key", k=5))
    assert main(["index", str(folder), "--store", store, "--include-hidden", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["store_documents"] == 4 and summary["skipped_hidden"] == []


@pytest.mark.parametrize("backend", ["faiss", "pgvector"])
def test_a_document_stored_as_it_is_is_not_embedded_again(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: Any, embedder: Any, backend: str
) -> None:
    """Re-indexing a folder after one file changed embedded every file again: the
    whole run's time, for one file's chunks."""
    folder = _folder(tmp_path / "kb", ["apples", "volcanoes"])
    store = str(tmp_path / "store") if backend == "faiss" else request.getfixturevalue("pg_url")
    assert main(["index", str(folder), "--store", store, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["chunks"] == 2 and first["unchanged_documents"] == 0
    (folder / "volcanoes.md").write_text("# volcanoes\n\nVolcanoes erupt molten basalt.")
    assert main(["index", str(folder), "--store", store]) == 0
    assert "1 of them unchanged since stored: not embedded again" in capsys.readouterr().out
    assert main(["index", str(folder), "--store", store, "--overlap-tokens", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # the chunks differ in nothing: none embedded
    assert summary["chunks"] == 0 and summary["unchanged_documents"] == 2
    assert summary["documents"] == summary["store_documents"] == 2
    assert summary["store_chunks"] == 2
    # Weights changed under the same model name: --reembed embeds them all again.
    assert main(["index", str(folder), "--store", store, "--reembed", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chunks"] == 2 and summary["unchanged_documents"] == 0
    assert summary["store_chunks"] == 2
    knowledge_base = KnowledgeBase(store, embedder=embedder)
    try:
        (found,) = knowledge_base.query("What do volcanoes erupt?", k=1)
        assert found.text == "Volcanoes erupt molten basalt."
    finally:
        knowledge_base.close()


def test_a_run_that_changes_nothing_saves_nothing(
    tmp_path: Path, capsys: Any, embedder: Any
) -> None:
    """Every run saved a new generation, unchanged documents and all, and every running
    reader (a proxy's retriever) then loaded the whole store again."""
    folder = _folder(tmp_path / "kb", ["apples", "volcanoes"])
    (folder / "empty.md").write_text("")
    store = tmp_path / "store"
    assert main(["index", str(folder), "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["saved"] is True
    manifest = store / "manifest.json"
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns, sorted(os.listdir(store)))
    assert main(["index", str(folder), "--store", str(store), "--prune", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["saved"] is False and summary["unchanged_documents"] == 2
    assert main(["index", str(folder), "--store", str(store)]) == 0
    assert "nothing changed: the store was left as it was" in capsys.readouterr().out
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns, sorted(os.listdir(store))) == before
    (folder / "apples.md").unlink()
    assert main(["index", str(folder), "--store", str(store), "--prune", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["saved"] is True and summary["pruned"] == ["apples.md"]
    assert manifest.read_bytes() != before[0]
