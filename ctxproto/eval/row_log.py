"""Each finished item's rows, as it finishes: ``rows.jsonl`` in the report folder.

An evaluation with a reader or log-prob scoring runs for hours on a CPU, and its
report is written at the end: without this file a Ctrl-C, a crash or a killed
job would lose every item already evaluated. So each item's rows (every
system's) are appended as one JSON line, written to disk (fsynced) when the item
finishes, and ``ctxproto eval --resume`` continues a stopped run from where it
stopped::

    {"ctxproto_eval_rows": 1, "run": {...RunRecord...}, "settings": {...}}
    {"item": 0, "rows": [{"item_id": "needle-0000", "system": "baseline", ...}, ...]}
    ...
    {"finished": true}

The first line records what the rows depend on: a run continued with other
pipelines, data or settings would mix two experiments in one report, so
``--resume`` compares them first and names the option that differs. A kill can
tear the last line; it is ignored when the file is read, and cut off before the
next line is appended.

Flushed only, a line sat in the page cache: a power cut or a crash of the
machine (not of the process) lost the items of the last seconds, or left a file
whose size had grown over blocks never written. One fsync per item costs 2-4 ms
(median, on a virtual disk): little against an item's seconds to minutes of
model calls, about as long as an item of a run with no model takes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from ctxproto.errors import ConfigError, DatasetError, StoreError, UsageError
from ctxproto.eval.dataset import EvalItem
from ctxproto.pipeline import Pipeline
from ctxproto.stores.atomic import fsync_directory

__all__ = [
    "ROWS_FILE",
    "RowLog",
    "RunRecord",
    "dataset_fingerprint",
    "item_fingerprint",
    "items_done",
    "pipeline_fingerprint",
]

ROWS_FILE = "rows.jsonl"
ROWS_VERSION = 1

Row = dict[str, Any]
_T = TypeVar("_T")


def items_done(done: dict[int, list[Row]]) -> str:
    """How many items are done, in words ("1 item done", "3 items done")."""
    return f"{len(done)} item{'' if len(done) == 1 else 's'} done"


def pipeline_fingerprint(pipeline: Pipeline) -> str:
    """SHA-256 of the pipeline's config, as ``to_dict`` gives it.

    The config's content, not its path: a config moved or copied elsewhere
    continues the run, an edited one does not (comments and key order aside).
    """
    return _digest(pipeline.to_dict())


def item_fingerprint(item: EvalItem) -> str:
    """A digest of everything an item holds: generated items are numbered by
    position, so an upgraded data package gives other items under the same ids."""
    content = {
        "id": item.id,
        "context": item.context.model_dump(mode="json"),
        "answers": item.answers,
        "metadata": item.metadata,
    }
    return _digest(content)[:32]


def _digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (keys sorted)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_fingerprint(spec: str) -> str:
    """A generated dataset's name, or ``sha256:`` and the digest of a data file's bytes.

    Read before the dataset loads (``chat-needle`` takes a minute), so that a
    refusal comes first; a spec that is neither is returned as it is, for
    ``load_dataset`` to refuse.
    """
    path = Path(spec)
    if spec in ("needle", "chat-needle") or not path.is_file():
        return spec
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror}") from exc
    return f"sha256:{digest.hexdigest()}"


class RunRecord(BaseModel):
    """What an evaluation's rows depend on, as ``ctxproto eval`` was asked for it.

    Each field is the command-line option of the same name (``pipelines``: the
    ``PIPELINE`` arguments, in order), so that a refusal names what to change.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipelines: list[str]
    """``pipeline_fingerprint`` of each pipeline, in the order given."""
    dataset: str
    """``dataset_fingerprint`` of ``--dataset``."""
    seed: int
    context_lengths: list[int]
    depths: list[int]
    turns: int
    limit: int | None
    reader: str
    logprob: bool
    logprob_max_tokens: int
    logprob_tolerance: float

    def unseeded(self, option: str) -> bool:
        """Whether ``option`` is the seed of a data file, which has no random part: a run
        recorded with a ``--seed`` for one (accepted then, refused now) could
        otherwise never be resumed."""
        return option == "seed" and self.dataset.startswith("sha256:")

    def difference(self, other: RunRecord) -> tuple[str, str] | None:
        """The first option ``other`` sets otherwise, and how; ``None`` when they match.

        ``self`` is the record of the rows written ("there"), ``other`` this run's
        ("here"): ``("--limit", "20 there, 10 here")``.
        """
        for name in type(self).model_fields:
            there, here = getattr(self, name), getattr(other, name)
            if there == here or self.unseeded(name):
                continue
            if name == "pipelines":
                return "PIPELINE", _changed_pipelines(there, here)
            if name == "dataset":
                return "--dataset", "other data"
            return "--" + name.replace("_", "-"), f"{_shown(there)} there, {_shown(here)} here"
        return None


def _changed_pipelines(there: Sequence[str], here: Sequence[str]) -> str:
    if len(there) != len(here):
        return f"{len(there)} there, {len(here)} here"
    changed = [str(n) for n, (a, b) in enumerate(zip(there, here, strict=True), 1) if a != b]
    return f"the config of pipeline {' and '.join(changed)} changed"


def _shown(value: Any) -> str:
    """An option's value as a person would type it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ctxproto_eval_rows: Literal[1]
    run: RunRecord
    settings: dict[str, Any]


class _ItemLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: int
    rows: list[Row]
    fingerprint: str | None = None
    """``item_fingerprint`` of the item the rows are of."""


class _EndLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    finished: Literal[True]


@dataclass
class _Written:
    """What a rows file holds, up to its last whole line."""

    header: _Header
    done: dict[int, list[Row]] = field(default_factory=dict)
    fingerprints: dict[int, str | None] = field(default_factory=dict)
    finished: bool = False
    end: int = 0
    """Bytes up to the end of the last whole line: a torn line after it is cut off."""


class RowLog:
    """``rows.jsonl`` of one run: checked before anything loads, written as items finish.

    ``RowLog(folder, run, resume=False)`` refuses a folder whose file holds an
    unfinished run: starting anew would drop its rows, which ``--resume``
    continues. ``resume=True`` refuses a file written for another ``RunRecord``,
    naming the option. Nothing is written until ``start``, so a run stopped while
    its models load leaves the earlier file as it was. The file is locked from
    here to ``close``: a second run into the folder (a ``--resume`` while the
    first still runs) would interleave its rows with the first one's; use it
    as a context manager, or call ``close``.
    """

    def __init__(self, folder: Path, run: RunRecord, *, resume: bool) -> None:
        self.path = folder / ROWS_FILE
        self.run = run
        self._handle: IO[bytes] | None = _locked(self.path)
        self._started = False
        try:
            written = self._check(_parse(self.path, self._handle.read()), resume)
        except BaseException:  # whatever the refusal, the lock goes with it; re-raised
            self.close()
            raise
        self._continued = written if resume else None
        self.done: dict[int, list[Row]] = dict(self._continued.done) if self._continued else {}
        """The rows of every item evaluated so far, by the item's position in the dataset."""
        self.fingerprints: dict[int, str | None] = (
            dict(self._continued.fingerprints) if self._continued else {}
        )
        """``item_fingerprint`` of each of those items (``None``: written without one)."""

    def _check(self, written: _Written | None, resume: bool) -> _Written | None:
        """The run to continue, if any; a ``ConfigError`` when this run may not go on."""
        if written is None or not written.done:
            return None  # no rows to lose, nor to mix with: a new run
        if resume:
            difference = written.header.run.difference(self.run)
            if difference is not None:
                raise _mismatch(*difference, self.path)
        elif not written.finished:
            raise ConfigError(
                f"{self.path.parent} holds an unfinished run ({items_done(written.done)}); "
                f"add --resume to continue it, or remove {self.path} or choose another "
                "--out to start anew",
                key="--resume",
            )
        return written

    def start(self, settings: dict[str, Any]) -> None:
        """Begin this run's rows; ``settings`` are the report's.

        A continued run must have the settings its rows were written with: the
        options matched, but what the environment decides may not have (log-prob
        scoring turns itself off when the ``runtime`` extra is missing).
        """
        if self._handle is None:
            raise UsageError("this RowLog is closed")
        continued = self._continued
        if continued is None:
            with self._reporting():
                self._handle.truncate(0)  # opened to append: each write goes to the end
            self._started = True
            header = _Header(ctxproto_eval_rows=ROWS_VERSION, run=self.run, settings=settings)
            self._write(header.model_dump(mode="json"))
            with self._reporting():
                fsync_directory(self.path.parent)  # the file's name, when it is new
            return
        then = continued.header.settings
        for key in sorted(set(settings) | set(then)):
            if then.get(key) != settings.get(key) and not self.run.unseeded(key):
                how = f"{_shown(then.get(key))} there, {_shown(settings.get(key))} here"
                raise _mismatch("--" + key.replace("_", "-"), how, self.path)
        with self._reporting():
            self._handle.truncate(continued.end)  # a torn last line
        self._started = True

    def append(self, index: int, rows: list[Row], fingerprint: str | None = None) -> None:
        """Add the rows of the item at ``index`` (``fingerprint``: ``item_fingerprint``
        of it), on disk (fsynced) before this returns."""
        self._write({"item": index, "rows": rows, "fingerprint": fingerprint})
        self.done[index] = rows
        self.fingerprints[index] = fingerprint

    def finish(self) -> None:
        """Mark the run complete: a new run may then replace the file without ``--resume``."""
        if self._continued is None or not self._continued.finished:
            self._write({"finished": True})

    def close(self) -> None:
        """Close the file, and with it the lock."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RowLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _write(self, line: dict[str, Any]) -> None:
        """Append ``line``, or a ``StoreError`` with the file as it was.

        A full disk cuts a line short: it is cut off at once, so that the file
        holds whole lines and a later append starts a line of its own. The file is
        unbuffered, so nothing of a failed line is left to be written at ``close``.
        """
        if self._handle is None or not self._started:
            raise UsageError("RowLog.start() must come before rows are written")
        data = memoryview((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        with self._reporting():
            end = os.fstat(self._handle.fileno()).st_size
            try:
                while data:
                    data = data[self._handle.write(data) :]  # a write may take part of it
                os.fsync(self._handle.fileno())
            except OSError:
                with suppress(OSError):  # the write's error is the one to report
                    self._handle.truncate(end)
                raise

    @contextmanager
    def _reporting(self) -> Iterator[None]:
        """The file system's refusals (a full disk, a read-only mount) as a ``StoreError``
        naming the file: raised as they were, they ended ``ctxproto eval`` in a
        traceback rather than its error line and the ``--resume`` hint."""
        try:
            yield
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write: {exc.strerror}") from exc


def _mismatch(option: str, how: str, path: Path) -> ConfigError:
    return ConfigError(
        f"differs from the run in {path.parent} ({how}); --resume continues a run with "
        f"the same options only: give them, or remove {path} to start anew",
        key=option,
    )


def _locked(path: Path) -> IO[bytes]:
    """``path`` opened to append (created if need be) and read, under an exclusive ``flock``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: ``_write`` knows what reached the file when a write fails.
        handle = open(path, "a+b", buffering=0)  # noqa: SIM115 - closed by RowLog.close()
    except OSError as exc:
        raise StoreError(f"{path}: cannot open: {exc.strerror}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"another ctxproto eval is writing to {path.parent}; wait for it to end "
            "(Ctrl-C ends it and keeps its rows), or choose another --out",
            key="--out",
        ) from None
    except OSError as exc:  # a file system without locks (some network mounts)
        handle.close()
        raise StoreError(
            f"{path}: cannot lock it ({exc.strerror}); choose an --out on a local disk"
        ) from exc
    handle.seek(0)
    return handle


def _parse(path: Path, data: bytes) -> _Written | None:
    """The whole lines of ``data``; ``None`` when there is not even a header.

    What follows the last newline is what a kill leaves of a line being written:
    it is not counted. A whole line that is not one of these lines means the file
    is not a rows file, or was changed by hand: a ``StoreError``, never rows
    silently skipped.
    """
    lines = data.split(b"\n")[:-1]
    if not lines:
        return None
    written = _Written(_parsed(_HEADER, path, 1, lines[0]), end=len(lines[0]) + 1)
    for number, line in enumerate(lines[1:], start=2):
        body = _parsed(_BODY, path, number, line)
        if isinstance(body, _ItemLine):
            written.done[body.item] = body.rows
            written.fingerprints[body.item] = body.fingerprint
        else:
            written.finished = body.finished
        written.end += len(line) + 1
    return written


_HEADER = TypeAdapter(_Header)
_BODY: TypeAdapter[_ItemLine | _EndLine] = TypeAdapter(_ItemLine | _EndLine)


def _parsed(adapter: TypeAdapter[_T], path: Path, number: int, line: bytes) -> _T:
    try:
        return adapter.validate_json(line)
    except ValidationError:
        raise StoreError(
            f"{path}:{number}: not a line of ctxproto eval's rows; move the file away to start anew"
        ) from None
