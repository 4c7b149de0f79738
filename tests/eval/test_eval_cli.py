"""End to end: ``ctxproto eval`` on small needle and JSONL sets, reports on disk."""

from __future__ import annotations

import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ctxproto.cli.main import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_pipeline(path: Path, budget: dict[str, Any], name: str = "windowed") -> Path:
    config = {
        "name": name,
        "budget": budget,
        "stages": [{"type": "recency_window", "init_parameters": {"max_turns": 4}}],
    }
    path.write_text(json.dumps(config), "utf-8")  # JSON is YAML
    return path


def run_eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(["eval", *args])
    captured = capsys.readouterr()
    summary = json.loads(captured.out) if code == 0 and "--json" in args else {}
    return code, summary, captured.err


def test_needle_eval_writes_json_markdown_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", {"max_prompt_tokens": 450})
    out = tmp_path / "out"
    code, summary, _ = run_eval(
        capsys, str(pipeline), "--dataset", "needle", "--context-lengths", "600,1200",
        "--depths", "0,50,100", "--out", str(out), "--json", "--no-logprob",
    )  # fmt: skip
    assert code == 0
    baseline, windowed = summary["baseline"], summary["pipelines"]["windowed"]
    assert baseline["items"] == windowed["items"] == 6
    assert baseline["compression_ratio"] == 1.0 and baseline["answer_retention"] == 1.0
    assert windowed["compression_ratio"] > 1.5
    assert 0.0 < windowed["answer_retention"] < 1.0
    assert windowed["logprob_retention"] is None and windowed["p50_ms"] > 0
    report = json.loads((out / "report.json").read_text("utf-8"))
    assert report["pipelines"] == summary["pipelines"]
    rows = {(r["system"], r["context_length"], r["depth_percent"]): r for r in report["items"]}
    # The budget drops the last-listed documents first: the needle at depth 0 survives,
    # the one at the end of a 1200-token haystack does not.
    assert rows[("windowed", 1200, 0)]["answer_retained"] == 1.0
    assert rows[("windowed", 1200, 100)]["answer_retained"] == 0.0
    assert rows[("windowed", 1200, 100)]["prompt_tokens"] <= 450
    markdown = (out / "report.md").read_text("utf-8")
    assert "| windowed |" in markdown and "depth \\ length" in markdown
    for name in ("quality_vs_compression.png", "retention_heatmap.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.models
@pytest.mark.slow
def test_jsonl_eval_reports_bad_lines_and_scores_logprob(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lm: Any
) -> None:
    items = tmp_path / "items.jsonl"
    facts = [("Dana", "4417302"), ("Omar", "9052816")]
    lines = [
        json.dumps(
            {
                "id": f"item-{i}",
                "question": f"What is {who}'s locker number? Reply with the number only.",
                "answers": [number],
                "documents": [{"id": "memo", "text": f"{who}'s locker number is {number}."}],
            }
        )
        for i, (who, number) in enumerate(facts)
    ]
    lines.insert(1, '{"id": "broken", "question": ')
    items.write_text("\n".join(lines) + "\n", "utf-8")
    pipeline = write_pipeline(
        tmp_path / "drop.yaml",
        {"max_prompt_tokens": 500, "section_caps": {"documents": 0}},
        name="no-documents",
    )
    code, summary, err = run_eval(
        capsys, str(pipeline), "--dataset", str(items), "--out", str(tmp_path / "out"), "--json"
    )
    assert code == 0
    assert "items.jsonl:2" in err and "invalid JSON" in err
    assert summary["dataset"]["problems"][0].startswith("items.jsonl:2")
    baseline, dropped = summary["baseline"], summary["pipelines"]["no-documents"]
    assert baseline["items"] == 2 and baseline["answer_retention"] == 1.0
    assert dropped["answer_retention"] == 0.0
    assert baseline["logprob_items"] == dropped["logprob_items"] == 2
    assert baseline["logprob_retention"] == 1.0 and baseline["logprob_delta_mean"] == 0.0
    # Without the memo the model cannot know the number: its log-probability falls.
    assert dropped["logprob_delta_mean"] < -1.0
    assert dropped["logprob_retention"] < 1.0
    assert not (tmp_path / "out" / "retention_heatmap.png").exists()  # no depths in a JSONL


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "nope"], "neither"),
        (["--dataset", "needle", "--reader", "gpt"], "unknown reader"),
        (["--dataset", "needle", "--limit", "0"], "--limit"),
        (["--dataset", "needle", "--depths", "0,150"], "percentages"),
        # A JSONL file has nothing to seed: --seed was accepted and changed nothing.
        (["--dataset", "items.jsonl", "--seed", "3"], "key '--seed': applies to --dataset"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", {"max_prompt_tokens": 450})
    code, _, err = run_eval(
        capsys, str(pipeline), *args, "--out", str(tmp_path / "o"), "--no-logprob"
    )
    assert code == 2
    assert message in err and "Traceback" not in err


def test_an_out_that_cannot_hold_the_reports_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the evaluation ran although its reports could not be written")

    # (The package re-exports the function under the module's name: patch the module.)
    monkeypatch.setattr(importlib.import_module("ctxproto.eval.evaluate"), "evaluate", never)
    pipeline = write_pipeline(tmp_path / "p.yaml", {"max_prompt_tokens": 450})
    taken = tmp_path / "taken"
    taken.write_text("not a folder", "utf-8")
    for out, problem in ((taken, "is not a folder"), (taken / "sub", "Not a directory")):
        code, _, err = run_eval(
            capsys, str(pipeline), "--dataset", "needle", "--out", str(out), "--no-logprob"
        )
        assert code == 2, err
        assert "--out" in err and problem in " ".join(err.split())
        assert "Traceback" not in err


def test_a_pipeline_that_fails_its_items_says_so_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", {"max_prompt_tokens": 20}, name="tiny")
    out = tmp_path / "out"
    code, summary, err = run_eval(
        capsys, str(pipeline), "--dataset", "needle", "--context-lengths", "600",
        "--depths", "0,50", "--out", str(out), "--no-logprob", "--json",
    )  # fmt: skip
    assert code == 0 and summary["pipelines"]["tiny"]["errors"] == 2
    # Not only "0 % retained": the user is told the pipeline failed, and with what.
    err = " ".join(err.split())
    assert "tiny: the pipeline failed on 2 of 2 items (first: BudgetError:" in err
    markdown = (out / "report.md").read_text("utf-8")
    assert "## Failures" in markdown and "BudgetError" in markdown


def test_the_terminal_table_keeps_whole_system_names_in_80_columns() -> None:
    from rich.console import Console

    from ctxproto.cli.eval import _print_summary
    from ctxproto.eval import EvalReport

    name = "recency-window-for-long-support-chats"
    rows = [
        {"item_id": "q1", "system": system, "original_tokens": 10, "prompt_tokens": 5,
         "ms": 1.0, "answer_retained": 1.0}
        for system in ("baseline", name, f"{name}-2")
    ]  # fmt: skip
    console = Console(width=80, file=io.StringIO())
    _print_summary(console, EvalReport(rows, dataset={"name": "x"}, settings={}))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert max(len(line) for line in lines) <= 80
    # The first column, read down: both names whole, never cut to the same "recency-…".
    column = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
    assert column == f"baseline{name}{name}-2"


def test_the_files_written_are_named_whole_however_long_the_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 80 columns the "wrote" line was wrapped in the middle of its paths."""
    pipeline = write_pipeline(tmp_path / "p.yaml", {"max_prompt_tokens": 450})
    out = tmp_path / "reports-of-the-quarterly-evaluation" / "needle-with-the-windowed-pipeline"
    code, _, err = run_eval(
        capsys, str(pipeline), "--dataset", "needle", "--context-lengths", "600",
        "--depths", "0", "--out", str(out), "--no-logprob",
    )  # fmt: skip
    assert code == 0
    lines = err.splitlines()
    for name in ("report.json", "report.md", "quality_vs_compression.png"):
        assert any(str(out / name) in line for line in lines), err


def test_loading_the_scoring_model_shows_on_the_progress_display(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Scorer:  # stands in for the LM, which takes seconds to load
        def __init__(self, *, max_tokens: int) -> None:
            self.max_tokens = max_tokens

        def score(self, _messages: Any, _answer: str) -> None:
            return None

    monkeypatch.setattr(
        importlib.import_module("ctxproto.eval.logprob"), "AnswerLogprobScorer", Scorer
    )
    pipeline = write_pipeline(tmp_path / "p.yaml", {"max_prompt_tokens": 450})
    code, _, err = run_eval(
        capsys, str(pipeline), "--dataset", "needle", "--context-lengths", "600",
        "--depths", "0", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0
    assert "loading models" in err and "eval needle" in err


# -- long runs: rows as they finish, Ctrl-C, --resume -------------------------------------

MINIMAL = str(Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "minimal.yaml")
NEEDLE = ["--dataset", "needle", "--context-lengths", "600,2000", "--depths", "0,50,100"]
TIMINGS = {"ms", "p50_ms", "p95_ms", "tokens_per_s"}


def untimed(value: Any) -> Any:
    """``value`` without the wall times, which differ from run to run."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def interrupt_after(
    monkeypatch: pytest.MonkeyPatch, items: int, out: Path, failure: Exception | None = None
) -> list[str]:
    """Ctrl-C (or ``failure``) in the item after ``items`` items, once its baseline ran.

    Returns, once it has happened, the lines that ``out``/rows.jsonl then held on disk.
    """
    from ctxproto.eval.runner import Evaluator

    evaluate, calls = Evaluator.evaluate, 0
    on_disk: list[str] = []

    def stopping(self: Evaluator, item: Any, on_step: Any = None) -> Any:
        nonlocal calls
        calls += 1
        if calls <= items:
            return evaluate(self, item, on_step)

        def interrupt() -> None:
            on_step()
            on_disk.extend((out / "rows.jsonl").read_text("utf-8").splitlines())
            raise failure or KeyboardInterrupt

        return evaluate(self, item, interrupt)

    monkeypatch.setattr(Evaluator, "evaluate", stopping)
    return on_disk


def test_a_run_stopped_by_ctrl_c_keeps_its_rows_and_resumes_to_the_same_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    args = [MINIMAL, *NEEDLE, "--no-logprob", "--json"]
    assert run_eval(capsys, *args, "--out", str(whole))[0] == 0
    with monkeypatch.context() as patch:
        on_disk = interrupt_after(patch, 2, stopped)
        code, _, err = run_eval(capsys, *args, "--out", str(stopped))
    assert code == 130
    # Each item's rows were on disk as soon as it finished, not only once the run ended.
    assert [json.loads(line).get("item") for line in on_disk] == [None, 0, 1]
    err = " ".join(err.split())
    assert f"interrupted after 2 of 6 items: their rows are in {stopped / 'rows.jsonl'}" in err
    assert "--resume continues" in err and "Traceback" not in err
    partial = json.loads((stopped / "report.json").read_text("utf-8"))
    assert partial["partial"] is True and partial["baseline"]["items"] == 2
    assert "**Partial:** the run stopped after 2 of 6 items" in (stopped / "report.md").read_text(
        "utf-8"
    )
    # A kill while the next line was being written tears it: it is not an item done.
    with open(stopped / "rows.jsonl", "ab") as rows:
        rows.write(b'{"item": 2, "rows": [{"item_id": "needle-00')
    # From another folder: the pipeline is known by its contents, not its path.
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text(Path(MINIMAL).read_text("utf-8"), "utf-8")
    code, summary, err = run_eval(
        capsys, moved.as_posix(), *args[1:], "--out", str(stopped), "--resume"
    )
    assert code == 0, err
    assert f"resuming {stopped / 'rows.jsonl'} (2 items done)" in err
    assert summary["partial"] is False
    resumed = json.loads((stopped / "report.json").read_text("utf-8"))
    expected = json.loads((whole / "report.json").read_text("utf-8"))
    assert untimed(resumed) == untimed(expected)
    assert len(expected["items"]) == 12
    lines = (stopped / "rows.jsonl").read_text("utf-8").splitlines()
    assert [json.loads(line).get("item") for line in lines] == [None, 0, 1, 2, 3, 4, 5, None]


def test_sigterm_ends_a_run_as_ctrl_c_does_with_its_partial_report(tmp_path: Path) -> None:
    """A batch scheduler stops a job with SIGTERM: the items done keep their report."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ctxproto", "eval", MINIMAL, *NEEDLE, "--no-logprob"]
    command += ["--limit", "3000", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(MINIMAL).parents[2])}
    run = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _lines(out / "rows.jsonl") < 3 and time.monotonic() < deadline:
            assert run.poll() is None, run.stderr.read() if run.stderr else ""
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, err
    assert "--resume continues" in " ".join(err.split()) and "Traceback" not in err
    partial = json.loads((out / "report.json").read_text("utf-8"))
    assert partial["partial"] is True and partial["baseline"]["items"] >= 2


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize(
    ("change", "option", "how"),
    [
        (["--limit", "3"], "--limit", "none there, 3 here"),
        (["--seed", "1"], "--seed", "0 there, 1 here"),
        (["--depths", "0,50"], "--depths", "0,50,100 there, 0,50 here"),
        (["--logprob"], "--logprob", "off there, on here"),
        (["--reader", "openai:http://127.0.0.1:9/v1"], "--reader", "none there"),
        (["--logprob-tolerance", "1"], "--logprob-tolerance", "0.69"),
        (["--pipeline-edited"], "PIPELINE", "the config of pipeline 1 changed"),
        (["--pipeline-added"], "PIPELINE", "1 there, 2 here"),
        (["--dataset-edited"], "--dataset", "other data"),
    ],
)
def test_resume_refuses_other_pipelines_data_or_options_naming_the_option(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    change: list[str],
    option: str,
    how: str,
) -> None:
    pipeline = write_pipeline(tmp_path / "p.yaml", {"max_prompt_tokens": 450})
    items = tmp_path / "items.jsonl"
    line = {"question": "Which locker?", "answers": ["4417"], "documents": [
        {"id": "memo", "text": "Dana's locker is 4417."}]}  # fmt: skip
    items.write_text("".join(json.dumps({"id": f"q{i}", **line}) + "\n" for i in range(3)))
    dataset = ["--dataset", str(items)] if "--dataset-edited" in change else NEEDLE
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1, out)
        code, _, _ = run_eval(capsys, str(pipeline), *dataset, "--out", str(out), "--no-logprob")
    assert code == 130
    if change == ["--pipeline-edited"]:
        write_pipeline(pipeline, {"max_prompt_tokens": 451})
    extra = [str(pipeline)] if change == ["--pipeline-added"] else []
    if change == ["--dataset-edited"]:
        items.write_text(items.read_text("utf-8").replace("4417", "4418"), "utf-8")
    given = [arg for arg in change if not arg.endswith(("-edited", "-added"))]
    if "--logprob" not in given:
        given.append("--no-logprob")
    code, _, err = run_eval(
        capsys, str(pipeline), *extra, *dataset, *given, "--out", str(out), "--resume"
    )
    err = " ".join(err.split())
    assert code == 2, err
    assert f"key '{option}': differs from the run in {out}" in err and how in err
    assert "Traceback" not in err
    # Refused before anything ran: the rows of the stopped run are still there.
    assert len((out / "rows.jsonl").read_text("utf-8").splitlines()) == 2


def test_a_new_run_into_an_unfinished_one_is_refused_until_resumed_or_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    args = [MINIMAL, *NEEDLE, "--no-logprob", "--out", str(out)]
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1, out)
        assert run_eval(capsys, *args)[0] == 130
    # Hours of rows are not dropped because --resume was forgotten.
    code, _, err = run_eval(capsys, *args)
    err = " ".join(err.split())
    assert code == 2 and "key '--resume'" in err and "unfinished run (1 item done)" in err
    assert run_eval(capsys, *args, "--resume")[0] == 0
    # A finished run is replaced by a new one, as its reports are.
    assert run_eval(capsys, *args)[0] == 0


def test_a_run_that_fails_midway_keeps_its_rows_and_says_how_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctxproto.errors import BackendUnavailableError

    out = tmp_path / "out"
    args = [MINIMAL, *NEEDLE, "--no-logprob", "--out", str(out)]
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3, out, BackendUnavailableError("connection refused"))
        code, _, err = run_eval(capsys, *args)
    err = " ".join(err.split())
    assert code == 1 and "error: connection refused" in err
    assert f"kept in {out / 'rows.jsonl'} (3 items done)" in err and "--resume" in err
    code, _, err = run_eval(capsys, *args, "--resume", "--json")
    assert code == 0 and "(3 items done)" in err
    assert json.loads((out / "report.json").read_text("utf-8"))["baseline"]["items"] == 6


def test_a_report_the_folder_refuses_is_an_error_and_resume_writes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every item evaluated, then the report cannot be written (a full disk, here a
    folder where report.md goes): an error line and how to get the report, not a
    traceback; ``--resume`` writes it from the rows, evaluating nothing again."""
    out = tmp_path / "out"
    args = [MINIMAL, *NEEDLE, "--no-logprob", "--json", "--out", str(out)]
    (out / "report.md").mkdir(parents=True)
    code, _, err = run_eval(capsys, *args)
    err = " ".join(err.split())
    assert code == 1, err
    assert f"error: cannot write the report to {out}: Is a directory" in err
    assert f"the rows of every item are kept in {out / 'rows.jsonl'}" in err
    assert "--resume writes the report" in err
    (out / "report.md").rmdir()
    code, summary, err = run_eval(capsys, *args, "--resume")
    assert code == 0, err
    assert "resuming" in err and "(6 items done)" in err
    assert summary["baseline"]["items"] == 6 and (out / "report.md").is_file()
