"""rows.jsonl: what a kill leaves is read back, what does not belong there is refused."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctxproto.context import Context
from ctxproto.errors import ConfigError, DatasetError, StoreError
from ctxproto.eval import Dataset, EvalItem, evaluate
from ctxproto.eval.evaluate import EvaluationInterrupted
from ctxproto.eval.row_log import ROWS_FILE, RowLog, RunRecord
from ctxproto.messages import Message
from ctxproto.pipeline import Pipeline

RUN = RunRecord(
    pipelines=["p"], dataset="needle", seed=0, context_lengths=[1000], depths=[0], turns=30,
    limit=None, reader="none", logprob=False, logprob_max_tokens=2048, logprob_tolerance=0.5,
)  # fmt: skip
SETTINGS: dict[str, Any] = {"seed": 0, "logprob": False}


def rows(item: str) -> list[dict[str, Any]]:
    return [{"item_id": item, "system": "baseline", "answer_retained": 1.0}]


def stopped_run(folder: Path, items: int, settings: dict[str, Any] = SETTINGS) -> Path:
    with RowLog(folder, RUN, resume=False) as log:
        log.start(settings)
        for index in range(items):
            log.append(index, rows(f"q{index}"))
    return folder / ROWS_FILE


def test_a_torn_last_line_is_not_an_item_and_is_cut_before_the_next(tmp_path: Path) -> None:
    path = stopped_run(tmp_path, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"item": 2, "rows": [{"item_id": "q')  # a kill, mid-line
    with RowLog(tmp_path, RUN, resume=True) as log:
        assert sorted(log.done) == [0, 1]
        log.start(SETTINGS)
        log.append(2, rows("q2"))
    with RowLog(tmp_path, RUN, resume=True) as log:
        assert sorted(log.done) == [0, 1, 2]


def test_each_items_rows_are_on_disk_before_append_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flushed only, the rows sat in the page cache: a crash of the machine lost the
    items of its last seconds, however long they had taken to evaluate."""
    path = tmp_path / ROWS_FILE
    synced: list[Any] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append("folder")
        else:  # what the file holds when it is synced: the line just written, whole
            last = json.loads(path.read_bytes().splitlines()[-1])
            synced.append(last.get("item", sorted(last)[0]))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with RowLog(tmp_path, RUN, resume=False) as log:
        log.start(SETTINGS)
        assert synced == ["ctxproto_eval_rows", "folder"]  # the header, the new file's name
        for index in range(2):
            log.append(index, rows(f"q{index}"))
            assert synced[-1] == index
        log.finish()
    assert synced[2:] == [0, 1, "finished"]


def test_a_line_that_is_no_row_line_is_a_store_error_naming_it(tmp_path: Path) -> None:
    path = stopped_run(tmp_path, 2)
    lines = path.read_text("utf-8").splitlines()
    lines[1] = '{"note": "edited by hand"}'
    path.write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(StoreError, match=rf"{ROWS_FILE}:2: not a line of ctxproto eval's rows"):
        RowLog(tmp_path, RUN, resume=True)


def test_settings_the_environment_changed_are_refused_naming_them(tmp_path: Path) -> None:
    stopped_run(tmp_path, 1, {**SETTINGS, "logprob": True})
    # Same options, but the log-prob scorer could not load this time (no runtime extra).
    with (
        RowLog(tmp_path, RUN, resume=True) as log,
        pytest.raises(ConfigError, match=r"'--logprob'.*\(on there, off here\)"),
    ):
        log.start(SETTINGS)


class Letters(Dataset):
    """Items named by ``ids``, each a question with one document."""

    name = "letters"

    def __init__(self, ids: list[str]) -> None:
        super().__init__()
        self.ids = ids

    def items(self, limit: int | None = None) -> Iterator[EvalItem]:
        for item_id in self.ids[:limit]:
            context = Context(query=Message(role="user", content=f"Which is {item_id}?"))
            yield EvalItem(item_id, context, [item_id])


def test_rows_of_items_the_dataset_no_longer_yields_are_refused(tmp_path: Path) -> None:
    stopped_run(tmp_path, 1)  # rows of "q0"
    with (
        RowLog(tmp_path, RUN, resume=True) as log,
        pytest.raises(DatasetError, match="rows of q0 as item 1, where the dataset now has a"),
    ):
        evaluate([Pipeline([], name="p")], Letters(["a", "b"]), settings=SETTINGS, rows=log)


def test_a_stop_right_after_an_item_is_saved_keeps_it_in_the_partial_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM lands between any two bytecodes: once it came just after an item's rows
    were saved, and the partial report counted one item fewer than the file held."""
    real_append = RowLog.append

    def append_then_stop(self: RowLog, index: int, *args: Any, **kwargs: Any) -> None:
        real_append(self, index, *args, **kwargs)
        if index == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(RowLog, "append", append_then_stop)
    with (
        RowLog(tmp_path, RUN, resume=False) as log,
        pytest.raises(EvaluationInterrupted) as stopped,
    ):
        evaluate([Pipeline([], name="p")], Letters(["a", "b", "c"]), settings=SETTINGS, rows=log)
    with RowLog(tmp_path, RUN, resume=True) as log:
        assert sorted(log.done) == [0, 1]
    assert sorted({row["item_id"] for row in stopped.value.report.rows}) == ["a", "b"]


class Versioned(Letters):
    """Letters whose questions depend on ``version``, as an upgraded data package's."""

    def __init__(self, ids: list[str], version: int) -> None:
        super().__init__(ids)
        self.version = version

    def items(self, limit: int | None = None) -> Iterator[EvalItem]:
        for item in super().items(limit):
            item.context.metadata["version"] = self.version
            yield item


def test_rows_of_an_item_that_changed_under_its_id_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generated items are numbered by position (``needle-0000``): an upgraded data
    package gives other items under the same ids, and a resume mixed the two."""
    from ctxproto.eval.runner import Evaluator

    real = Evaluator.evaluate
    calls = []

    def stop_at_the_second(self: Evaluator, item: EvalItem, **kwargs: Any) -> Any:
        calls.append(item.id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, item, **kwargs)

    pipelines = [Pipeline([], name="p")]
    with monkeypatch.context() as patch, RowLog(tmp_path, RUN, resume=False) as log:
        patch.setattr(Evaluator, "evaluate", stop_at_the_second)
        with pytest.raises(KeyboardInterrupt):
            evaluate(pipelines, Versioned(["a", "b"], 1), settings=SETTINGS, rows=log)
    with RowLog(tmp_path, RUN, resume=True) as log:  # the same data: it resumes
        report = evaluate(pipelines, Versioned(["a", "b"], 1), settings=SETTINGS, rows=log)
    assert not report.partial
    with monkeypatch.context() as patch, RowLog(tmp_path / "v", RUN, resume=False) as log:
        patch.setattr(Evaluator, "evaluate", stop_at_the_second)
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            evaluate(pipelines, Versioned(["a", "b"], 1), settings=SETTINGS, rows=log)
    with (
        RowLog(tmp_path / "v", RUN, resume=True) as log,
        pytest.raises(DatasetError, match="another item under that id"),
    ):
        evaluate(pipelines, Versioned(["a", "b"], 2), settings=SETTINGS, rows=log)


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    with RowLog(tmp_path, RUN, resume=False) as first:
        first.start(SETTINGS)
        with pytest.raises(ConfigError, match=r"'--out': another ctxproto eval is writing"):
            RowLog(tmp_path, RUN, resume=True)
    with RowLog(tmp_path, RUN, resume=True):  # once the first run has ended
        pass


def test_a_folder_that_cannot_be_locked_is_a_store_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network mounts have no locks: a raw OSError traceback on every eval."""
    import errno
    import fcntl

    def no_locks(*_args: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(StoreError, match=r"rows.jsonl: cannot lock it \(No locks available\)"):
        RowLog(tmp_path, RUN, resume=False)


APPEND_PAST_A_SIZE_LIMIT = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from ctxproto.errors import StoreError
    from ctxproto.eval.row_log import RowLog
    from tests.eval.test_row_log import RUN, SETTINGS, rows

    with RowLog(Path(sys.argv[1]), RUN, resume=False) as log:
        log.start(SETTINGS)
        log.append(0, rows("q0"))
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # as a disk that is full
        try:
            log.append(1, rows("q1" * 4096))
        except StoreError as exc:
            print("refused", exc, flush=True)
        log.append(2, rows("q2"))
    print("closed", flush=True)
    """
)


def test_a_full_disk_is_a_store_error_and_leaves_whole_lines(tmp_path: Path) -> None:
    """A full disk in the middle of an item's line: a ``StoreError`` naming the file,
    not an ``OSError`` raised again when the file closes; the part of the line that
    reached the disk is cut off, so the items after it are read back."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", APPEND_PAST_A_SIZE_LIMIT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    path = tmp_path / ROWS_FILE
    assert done.stdout.splitlines() == [f"refused {path}: cannot write: File too large", "closed"]
    with RowLog(tmp_path, RUN, resume=True) as log:
        assert sorted(log.done) == [0, 2]


def test_a_data_files_run_recorded_with_a_seed_resumes_without_one(tmp_path: Path) -> None:
    """``--seed`` was accepted with a JSONL file and recorded; now refused for one, the
    run could never be resumed ("3 there, 0 here")."""
    seeded = RUN.model_copy(update={"dataset": "sha256:ab", "seed": 3})
    with RowLog(tmp_path, seeded, resume=False) as log:
        log.start({"seed": 3, "logprob": False})
        log.append(0, rows("q0"))
    plain = RUN.model_copy(update={"dataset": "sha256:ab"})
    with RowLog(tmp_path, plain, resume=True) as log:
        log.start({"seed": 0, "logprob": False})
        assert list(log.done) == [0]
    generated = RUN.model_copy(update={"seed": 3})
    assert RUN.difference(generated) == ("--seed", "0 there, 3 here")
