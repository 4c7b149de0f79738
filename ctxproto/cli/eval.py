"""``ctxproto eval PIPELINE.yaml [...] --dataset NAME_OR_PATH --out DIR [--json]``.

Evaluates each pipeline next to the uncompressed baseline on the same items and
writes report.json, report.md and PNG plots to ``--out``. Progress goes to
stderr, so ``--json`` output on stdout stays machine-readable. Each item's rows
go to ``--out``/rows.jsonl as it finishes; Ctrl-C (or SIGTERM, as a batch
scheduler stops a job) writes a partial report (exit 130), and ``--resume``
continues a stopped run there.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ctxproto._extras import require
from ctxproto.cli.arguments import (
    int_at_least,
    int_list,
    non_blank_path,
    non_negative_float,
)
from ctxproto.cli.interrupt import sigterm_as_ctrl_c
from ctxproto.cli.main import EXIT_INTERRUPTED, print_json
from ctxproto.config import validation_error_to_config_error
from ctxproto.errors import ConfigError, ModelNotAvailableError, StoreError, UsageError

if TYPE_CHECKING:
    from ctxproto.eval.dataset import DatasetOptions
    from ctxproto.eval.logprob import AnswerLogprobScorer
    from ctxproto.eval.readers import Reader
    from ctxproto.eval.report import EvalReport
    from ctxproto.eval.row_log import RowLog
    from ctxproto.pipeline import Pipeline

__all__ = ["register"]

GENERATED_OPTIONS: dict[str, str] = {
    "context_lengths": "needle",
    "depths": "needle",
    "turns": "chat-needle",
}
"""The options that shape one generated dataset, and that dataset: given with any
other ``--dataset``, they would be silently ignored."""
GENERATED_DATASETS = ("needle", "chat-needle")
"""The datasets ``--seed`` draws: a JSONL file has no random part to seed."""


def register(subparsers: Any) -> None:
    from ctxproto.eval.logprob import DEFAULT_LOGPROB_MAX_TOKENS
    from ctxproto.eval.runner import DEFAULT_LOGPROB_TOLERANCE

    parser = subparsers.add_parser(
        "eval",
        help="measure tokens saved, answer quality and latency of pipelines against the baseline",
        description="Evaluate PIPELINE configs next to the uncompressed baseline on a dataset: "
        "'needle', 'chat-needle' or a JSONL file (schema in docs/eval.md).",
    )
    parser.add_argument("pipelines", nargs="+", metavar="PIPELINE", help="pipeline YAML files")
    parser.add_argument("--dataset", required=True, help="needle, chat-needle or a .jsonl path")
    parser.add_argument("--out", required=True, type=non_blank_path, help="folder for the reports")
    parser.add_argument("--limit", type=int_at_least(1), help="evaluate at most N items")
    parser.add_argument(
        "--seed", type=int, help="needle, chat-needle: seed of the generated data (default 0)"
    )
    parser.add_argument(
        "--reader",
        type=_reader_spec,
        default="none",
        help="none (default), bundled, or openai:URL of a server",
    )
    parser.add_argument(
        "--logprob",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the gold answer's log-probability with the bundled LM (default: on)",
    )
    parser.add_argument(
        "--logprob-max-tokens",
        type=int_at_least(1),
        default=DEFAULT_LOGPROB_MAX_TOKENS,
        help="skip log-prob scoring of prompts longer than this many model tokens "
        f"(default {DEFAULT_LOGPROB_MAX_TOKENS}: an 8k-token pass takes ~30 s on 2 CPU cores)",
    )
    parser.add_argument(
        "--logprob-tolerance",
        type=non_negative_float,
        default=DEFAULT_LOGPROB_TOLERANCE,
        help="nats the answer's log-prob may drop and still count as retained (default ln 2)",
    )
    parser.add_argument(
        "--context-lengths",
        type=int_list,
        help="needle: context lengths, e.g. 1000,2000,4000,8000",
    )
    parser.add_argument("--depths", type=int_list, help="needle: depths in percent, e.g. 0,50,100")
    parser.add_argument(
        "--turns", type=int, help="chat-needle: turns per conversation (default 30)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run stopped in --out: items already done are not evaluated again "
        "(same pipelines, dataset and options only)",
    )
    parser.add_argument("--json", action="store_true", help="print the aggregate JSON to stdout")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ctxproto.eval.dataset import DatasetOptions
    from ctxproto.pipeline import Pipeline

    _check_dataset_options(args)
    pipelines = [Pipeline.from_yaml(path) for path in args.pipelines]
    require("matplotlib", extra="eval")  # the plots are drawn after the whole evaluation
    _check_writable(args.out)
    overrides = {
        key: getattr(args, key)
        for key in ("seed", "context_lengths", "depths", "turns")
        if getattr(args, key) is not None
    }
    try:
        options = DatasetOptions(**overrides)
    except ValidationError as exc:
        error = validation_error_to_config_error(exc)
        option = "--" + (error.key or "").split(".")[0].replace("_", "-")
        raise ConfigError(error.detail, key=option) from None
    # The rows file stays locked until the run ends. SIGTERM, how a batch scheduler
    # stops a job before it kills it, ends the run as Ctrl-C does: the items done get
    # their partial report and the --resume hint instead of a silent end.
    with _row_log(args, pipelines, options) as rows, sigterm_as_ctrl_c():
        return _evaluate(args, pipelines, options, rows)


def _evaluate(
    args: argparse.Namespace, pipelines: list[Pipeline], options: DatasetOptions, rows: RowLog
) -> int:
    """The evaluation itself, once the arguments and ``--out`` are known to be good."""
    from ctxproto.eval.dataset import load_dataset
    from ctxproto.eval.evaluate import EvaluationInterrupted, evaluate
    from ctxproto.eval.readers import reader_from_spec
    from ctxproto.eval.row_log import items_done

    err = Console(stderr=True, highlight=False)
    if rows.done:
        err.print(f"resuming {rows.path} ({items_done(rows.done)})", markup=False, soft_wrap=True)
    dataset = load_dataset(args.dataset, options)
    for problem in dataset.problems:
        err.print(f"[yellow]skipped[/] {escape(str(problem))}", soft_wrap=True)
    reader: Reader | None = None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, TimeElapsedColumn(), console=err, transient=args.json) as bar:
            # The reader's and the scorer's models take seconds to load: show it.
            loads = args.logprob or args.reader != "none"
            loading = bar.add_task("loading models", total=1, visible=loads)
            reader = reader_from_spec(args.reader)
            scorer = _load_scorer(args, err) if args.logprob else None
            bar.update(loading, completed=1)
            task = bar.add_task(f"eval {escape(dataset.name)}", total=None)
            report = evaluate(
                pipelines,
                dataset,
                limit=args.limit,
                scorer=scorer,
                reader=reader,
                logprob_tolerance=args.logprob_tolerance,
                settings={"seed": options.seed, "logprob": scorer is not None},
                on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                rows=rows,
            )
    except EvaluationInterrupted as stop:
        return _stopped(stop.report, rows.path, args.out, err)
    except Exception as exc:  # any failure, said by main (and re-raised): the hint is added
        # (A UsageError comes before the first item: the run's settings did not match.)
        if rows.done and not isinstance(exc, UsageError):
            err.print(
                f"the rows of the items finished are kept in {rows.path} "
                f"({items_done(rows.done)}): the same command with --resume continues the run",
                markup=False,
                soft_wrap=True,
            )
        raise
    finally:
        if reader is not None:
            reader.close()
    for line in report.failures():
        err.print(line, style="yellow", markup=False, soft_wrap=True)
    try:
        written = report.write(args.out)
    except StoreError:
        err.print(
            f"the rows of every item are kept in {rows.path}: the same command with --resume "
            "writes the report without evaluating them again",
            markup=False,
            soft_wrap=True,
        )
        raise
    if args.json:
        print_json(report.summary())
    else:
        _print_summary(Console(), report)
        # Unwrapped, as every other line here: wrapped at 80 columns, a long --out was cut
        # in the middle of its paths, which then could not be copied.
        err.print("wrote " + ", ".join(str(p) for p in written), markup=False, soft_wrap=True)
    return 0


def _row_log(
    args: argparse.Namespace, pipelines: list[Pipeline], options: DatasetOptions
) -> RowLog:
    """The run's rows file, checked against ``--resume`` before the dataset and models load."""
    from ctxproto.eval.row_log import (
        RowLog,
        RunRecord,
        dataset_fingerprint,
        pipeline_fingerprint,
    )

    run = RunRecord(
        pipelines=[pipeline_fingerprint(pipeline) for pipeline in pipelines],
        dataset=dataset_fingerprint(args.dataset),
        seed=options.seed,
        context_lengths=options.context_lengths,
        depths=options.depths,
        turns=options.turns,
        limit=args.limit,
        reader=args.reader,
        logprob=args.logprob,
        logprob_max_tokens=args.logprob_max_tokens,
        logprob_tolerance=args.logprob_tolerance,
    )
    return RowLog(args.out, run, resume=args.resume)


def _stopped(report: EvalReport, rows: Path, out: Path, err: Console) -> int:
    """After Ctrl-C: the partial report of the items that finished, and how to go on."""
    from ctxproto.eval.runner import BASELINE

    finished = len(report.rows_of(BASELINE))
    if finished:
        report.write(out)
        err.print(
            f"interrupted after {finished} of {report.dataset['items']} items: their rows "
            f"are in {rows}, a partial report in {out / 'report.md'}",
            markup=False,
            soft_wrap=True,
        )
    else:
        err.print("interrupted before the first item finished", markup=False)
    err.print("the same command with --resume continues the run", markup=False)
    return EXIT_INTERRUPTED


def _load_scorer(args: argparse.Namespace, err: Console) -> AnswerLogprobScorer | None:
    """The log-prob scorer, or ``None`` (said on stderr) when its extra is missing."""
    from ctxproto.eval.logprob import AnswerLogprobScorer

    try:
        return AnswerLogprobScorer(max_tokens=args.logprob_max_tokens)
    except ModelNotAvailableError as exc:
        err.print(f"[yellow]log-prob retention off:[/] {escape(str(exc))}", soft_wrap=True)
        return None


def _reader_spec(text: str) -> str:
    """``--reader``, checked for its form when the command line is read.

    ``reader_from_spec`` loads the bundled model as it builds the reader, after
    the dataset: a misspelt reader would otherwise be refused only after the
    dataset had loaded (a minute for ``chat-needle``).
    """
    if text in ("none", "bundled") or (text.startswith("openai:") and text != "openai:"):
        return text
    raise argparse.ArgumentTypeError(
        f"unknown reader '{text}' (expected none, bundled or openai:URL)"
    )


def _check_dataset_options(args: argparse.Namespace) -> None:
    """Refuse an option of one generated dataset given with another ``--dataset``."""
    for key, dataset in GENERATED_OPTIONS.items():
        if getattr(args, key) is not None and args.dataset != dataset:
            raise ConfigError(
                f"applies to --dataset {dataset} only, not {args.dataset}",
                key="--" + key.replace("_", "-"),
            )
    # Accepted with a JSONL file, it changed nothing, yet a --resume with another
    # seed was refused for it.
    if args.seed is not None and args.dataset not in GENERATED_DATASETS:
        raise ConfigError(
            f"applies to --dataset {' and '.join(GENERATED_DATASETS)} only, not {args.dataset}",
            key="--seed",
        )


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and check that files can be written there, before any work.

    The reports are written after the whole evaluation, so an ``--out`` that is a
    file or a folder this user cannot write would otherwise end a long run in a
    traceback, with every result lost.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"{folder} is not a folder", key="--out", expected="a folder for the reports"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot write the reports to {folder}: {exc.strerror}",
            key="--out",
            expected="a folder this user can write",
        ) from None


def _print_summary(console: Console, report: EvalReport) -> None:
    from rich.table import Table

    from ctxproto.eval.report import TERMINAL_COLUMNS

    table = Table(title=f"ctxproto eval: {escape(str(report.dataset.get('name')))}")
    titles, rows = report.cells(TERMINAL_COLUMNS)
    table.add_column("system", overflow="fold")  # never cut: "name" and "name-2" must differ
    for title in titles:
        table.add_column(title, justify="right")
    for system, cells in rows.items():
        table.add_row(escape(system), *cells)
    console.print(table)
