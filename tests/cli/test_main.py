"""Exit codes and error text of the ``ctxproto`` command, run as a user runs it.

Usage errors (a bad argument of any sub-command) exit 2 and name the argument;
operational failures exit 1; either way one readable message, no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ctxproto.cli.main import main

ROOT = Path(__file__).parents[2]
MINIMAL = str(ROOT / "examples" / "pipelines" / "minimal.yaml")

# Runs the CLI with `faiss` and `sentence_transformers` made unimportable, the way
# they are on a machine without the `embed` extra: the import system refuses them.
WITHOUT_EMBED_EXTRA = """
import sys

class RefuseEmbedExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"faiss", "sentence_transformers"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, RefuseEmbedExtra())
from ctxproto.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def ctxproto(
    *args: str, program: str | None = None, module: str = "ctxproto.cli"
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, *(["-c", program] if program else ["-m", module])]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, check=False, timeout=120
    )


def test_missing_extra_prints_the_install_hint_with_its_brackets(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.md").write_text("Returns are accepted within 30 days.\n", "utf-8")
    proc = ctxproto(
        "index", str(docs), "--store", str(tmp_path / "store"), program=WITHOUT_EMBED_EXTRA
    )
    assert proc.returncode == 1
    assert "pip install 'ctxproto[embed]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["index", "docs", "--store", "s", "--chunk-tokens", "0"], "--chunk-tokens"),
        (["index", "docs", "--store", "s", "--overlap-tokens", "-1"], "--overlap-tokens"),
        (
            ["index", "docs", "--store", "s", "--chunk-tokens", "64", "--overlap-tokens", "64"],
            "--overlap-tokens",
        ),
        (["eval", MINIMAL, "--dataset", "needle", "--out", "o", "--limit", "0"], "--limit"),
        (
            ["eval", MINIMAL, "--dataset", "needle", "--out", "o", "--logprob-tolerance", "-1"],
            "--logprob-tolerance",
        ),
        (["run", MINIMAL, "--request", "missing.json"], "missing.json"),
        (["bench", "decode", "--rounds", "0"], "--rounds"),
        (["bench", "chat", "--turns", "0"], "--turns"),
        (["bench", "stages", "--samples", "x"], "--samples"),
        (["bench", "prefix", "--requests", "-2"], "--requests"),
        (["bench", "retrieval", "--queries", "0"], "--queries"),
        (["bench", "cache", "--entries", "0"], "--entries"),
        (["bench", "cache", "--pairs", "missing"], "--pairs"),
        (["bench", "proxy", "--requests", "0"], "--requests"),
        (["bench", "proxy", "--clients", "-1"], "--clients"),
        (["bench", "proxy", "--seconds", "0"], "--seconds"),
        (["bench", "proxy", "--chat-turns", "-1"], "--chat-turns"),
        (["bench", "proxy", "--chat-sessions", "0"], "--chat-sessions"),
        (["bench", "proxy", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["bench", "suite", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["bench", "suite", "--workloads", ""], "--workloads"),
        (["bench", "suite", "--workloads", "support,nope"], "--workloads"),
        (["bench", "suite", "--paths", "ctxproto,engine,nope"], "--paths"),
        (["bench", "chat", "--paths", ""], "--paths"),
        (["bench", "stores", "--parts", ""], "'--parts': no part named"),
        (["bench", "prefix", "--device", "gpu0"], "--device"),
        (["bench", "prefix", "--dtype", "float99"], "--dtype"),
        (["demo", "--turns", "0"], "--turns"),
        (["demo", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["serve", MINIMAL, "--port", "99999"], "--port"),
        (["index", "docs", "--store", "redis://cache/0"], "--store"),
        (["index", "docs", "--store", "s3://bucket/kb"], "--store"),
        # Blank, as an unset variable gives it: read as a path, the working directory.
        (["index", "docs", "--store", ""], "argument --store: must not be empty"),
        (["index", "docs", "--store", " "], "argument --store: must not be empty"),
        (["eval", MINIMAL, "--dataset", "needle", "--out", ""], "argument --out: must not"),
        (["index", "", "--store", "s", "--prune"], "argument source: must not be empty"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], named: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("Some text.\n", "utf-8")
    proc = ctxproto(*args)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr.replace("\n", "")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


def test_main_returns_the_exit_code_of_an_argument_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["index", "docs", "--store", "s", "--chunk-tokens", "0"]) == 2
    assert "argument --chunk-tokens: must be at least 1, got 0" in capsys.readouterr().err


def test_python_dash_m_ctxproto_runs_the_command() -> None:
    result = ctxproto("--version", module="ctxproto")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ctxproto ")


def into_closed_pipe(args: list[str], *, unbuffered: bool) -> subprocess.CompletedProcess[str]:
    """Run ``ctxproto ARGS`` with stdout a pipe whose reader has already gone."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "ctxproto", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["bench", "--help"],
        ["run", MINIMAL, "--request", str(ROOT / "examples/requests/support_chat.json"), "--json"],
        # Printed by Rich, whose Console exited 1 by itself when its reader had gone.
        ["run", MINIMAL, "--request", str(ROOT / "examples/requests/support_chat.json")],
    ],
    ids=["help", "bench-help", "run-json", "run-table"],
)
def test_a_reader_that_stops_early_ends_the_command_quietly(
    args: list[str], unbuffered: bool
) -> None:
    proc = into_closed_pipe(args, unbuffered=unbuffered)
    assert proc.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError"
    assert proc.returncode in (0, 141)  # as a Unix filter killed by SIGPIPE reports it


def test_a_command_started_with_stdout_closed_ends_without_a_traceback() -> None:
    """Started with its stdout closed (`>&-`, a daemon's closed descriptors), Python has
    no sys.stdout: the flush at the end of every command raised AttributeError."""
    import os

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ctxproto",
            "run",
            MINIMAL,
            "--request",
            str(ROOT / "examples/requests/support_chat.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        preexec_fn=lambda: os.close(1),  # the child starts with descriptor 1 closed
    )
    assert proc.stderr == ""
    assert proc.returncode == 0


def test_json_output_is_strict_json_with_null_for_a_figure_not_measured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from ctxproto.cli.main import print_json

    print_json({"ratio": float("nan"), "rates": [1.5, float("inf")], "name": "ü"})
    out = capsys.readouterr().out

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(out, parse_constant=refuse) == {
        "ratio": None,
        "rates": [1.5, None],
        "name": "ü",
    }
    assert out.count("\n") == 1
    assert out.isascii()  # escaped: a terminal or pipe that is not UTF-8 takes it too


def test_a_broken_pipe_that_is_not_stdout_is_an_error_not_a_quiet_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With stdout that has no descriptor (captured, embedded), a BrokenPipeError from a
    socket or a child was taken for a reader gone and swallowed with exit 141."""
    import argparse
    import importlib

    cli_main = importlib.import_module("ctxproto.cli.main")  # the module, not its function

    def failing(args: argparse.Namespace) -> int:
        raise BrokenPipeError("the child process went away")

    parser = cli_main.build_parser()
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(handler=failing))
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    with pytest.raises(BrokenPipeError, match="child process"):
        cli_main.main(["anything"])


def test_eval_without_its_extra_says_so_before_any_work(tmp_path: Path) -> None:
    """The plots are drawn after the whole evaluation: without matplotlib a long run
    ended in the missing extra, with nothing to show for it."""
    program = WITHOUT_EMBED_EXTRA.replace('{"faiss", "sentence_transformers"}', '{"matplotlib"}')
    proc = ctxproto(
        "eval", MINIMAL, "--dataset", "needle", "--out", str(tmp_path / "out"), program=program
    )
    assert proc.returncode == 1
    assert "pip install 'ctxproto[eval]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [{type: no_such_stage}]\n", "utf-8")
    proc = ctxproto(
        "eval", str(broken), "--dataset", "needle", "--out", str(tmp_path / "o"), program=program
    )
    assert proc.returncode == 2 and "no_such_stage" in proc.stderr  # the file's error first
