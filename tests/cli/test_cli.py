import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxproto.cli.main import main

ROOT = Path(__file__).parents[2]
MINIMAL = str(ROOT / "examples" / "pipelines" / "minimal.yaml")
REQUEST = str(ROOT / "examples" / "requests" / "support_chat.json")


def test_run_json_reports_tokens_stages_and_messages(capsys):
    assert main(["run", MINIMAL, "--request", REQUEST, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_tokens"] <= out["budget"]
    assert out["prompt_tokens"] < out["original_tokens"]
    assert [s["name"] for s in out["stages"]] == ["recency_window"]
    assert {"tokens_in", "tokens_out", "ms"} <= set(out["stages"][0])
    assert out["messages"][0]["role"] == "system"


def test_run_prints_prompt_and_stage_table(capsys):
    assert main(["run", MINIMAL, "--request", REQUEST]) == 0
    out = capsys.readouterr().out
    assert "recency_window" in out
    assert "remind me of my order number" in out


@pytest.mark.models
@pytest.mark.slow
def test_demo_serves_a_short_chat_both_ways(capsys):
    assert main(["demo", "--turns", "6", "--max-new-tokens", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "effective TPS" in out
    assert "saved; prefix reuse" in out


def test_misspelled_key_exits_2_naming_the_key_without_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "budget:\n  max_prompt_tokens: 100\nstages:\n"
        "  - type: recency_window\n    init_parameters:\n      max_turnz: 3\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ctxproto.cli", "run", str(config), "--request", REQUEST],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "max_turnz" in proc.stderr
    assert str(config) in proc.stderr.replace("\n", "")
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_a_boolean_budget_exits_2_naming_the_key(tmp_path, capsys):
    """Read as a one-token budget, it failed each request with exit 1, naming no key."""
    config = tmp_path / "pipeline.yaml"
    config.write_text("budget:\n  max_prompt_tokens: true\n")
    assert main(["run", str(config), "--request", REQUEST, "--json"]) == 2
    captured = capsys.readouterr()
    err = captured.err.replace("\n", "")
    assert "budget.max_prompt_tokens" in err and str(config) in err
    assert captured.out == ""


def test_bad_request_exits_2(tmp_path, capsys):
    request = tmp_path / "r.json"
    request.write_text("{not json")
    assert main(["run", MINIMAL, "--request", str(request)]) == 2
    assert str(request) in capsys.readouterr().err.replace("\n", "")


def test_help_lists_commands(capsys):
    assert main([]) == 2
    assert "run" in capsys.readouterr().out


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctxproto.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_bad_input_files_exit_2_naming_file_and_key_without_traceback(tmp_path):
    """One subprocess per case: each used to end in a traceback or run on silently."""
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}')
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 50_000 + "]" * 50_000 + "\n")
    no_store = tmp_path / "rag.yaml"
    no_store.write_text(
        "stages:\n  - type: retriever\n    init_parameters:\n"
        f"      store: {tmp_path / 'missing-store'}\n"
    )
    state_is_file = tmp_path / "summary.yaml"
    state_is_file.write_text(
        f"stages:\n  - type: summarizer\n    init_parameters:\n      state_path: {latin1}\n"
    )
    cases = [
        (MINIMAL, str(latin1), str(latin1), "not UTF-8"),
        (str(deep), REQUEST, str(deep), "nested more than"),
        (str(no_store), REQUEST, "stages[0].init_parameters.store", "no store at"),
        (str(state_is_file), REQUEST, "stages[0].init_parameters.state_path", "is a file"),
        (MINIMAL, "/dev/zero", "/dev/zero", "larger than the 16 MiB limit"),
    ]
    for config, request, named, problem in cases:
        proc = _run_cli("run", config, "--request", request, "--json")
        stderr = proc.stderr.replace("\n", "")
        assert proc.returncode == 2, (config, request, proc.stderr[-500:])
        assert named in stderr and problem in stderr
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "Hello, how can I help?"}],
        [{"role": "system", "content": "Be brief."}],
    ],
    ids=["assistant", "system"],
)
def test_run_refuses_a_request_with_no_user_message_as_the_proxy_does(tmp_path, capsys, messages):
    """It ran with exit 0 and printed ``"messages": []``: nothing to answer, and an
    empty chat that an OpenAI server refuses. The proxy answers the same body 400."""
    request = tmp_path / "no-question.json"
    request.write_text(json.dumps({"messages": messages}))
    assert main(["run", MINIMAL, "--request", str(request), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{request}: key 'messages': a chat request needs a user message" in captured.err


def test_run_json_lists_the_repairs_made_to_the_request(tmp_path, capsys):
    request = tmp_path / "orphan.json"
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "call_9", "content": "stray"},
        {"role": "user", "content": "still there?"},
    ]
    request.write_text(json.dumps({"messages": messages}))
    assert main(["run", MINIMAL, "--request", str(request), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["repairs"] == ["dropped 1 tool result that answered no call"]
    assert [m["role"] for m in out["messages"]] == ["user", "user"]


def test_run_json_takes_a_stdout_that_is_not_utf8(tmp_path):
    """Non-ASCII text through a pipe or terminal that is not UTF-8 (a Windows redirect,
    a C locale): the JSON ended in a UnicodeEncodeError traceback, exit 1."""
    request = tmp_path / "unicode.json"
    question = "Grüße — ¿mi pedido? 你好"
    request.write_text(json.dumps({"messages": [{"role": "user", "content": question}]}))
    proc = subprocess.run(
        [sys.executable, "-m", "ctxproto.cli", "run", MINIMAL, "--request", str(request), "--json"],
        capture_output=True,
        check=False,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert proc.returncode == 0, proc.stderr.decode()[-500:]
    assert json.loads(proc.stdout)["messages"][-1]["content"] == question


def test_run_says_what_the_budget_dropped(capsys):
    """The stage table said recency_window kept 8 messages, the prompt printed 6, and
    nothing said the budget had dropped the other 2 (`--json` had them as `dropped`)."""
    assert main(["run", MINIMAL, "--request", REQUEST]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "budget 1500, dropped 2 history messages," in out


def test_run_table_cuts_no_stage_counter_at_80_columns(capsys, monkeypatch):
    """The counters column cut a name too long for it: "fallback_sentences_droppe…",
    its value lost with it."""
    monkeypatch.setenv("COLUMNS", "80")
    compress = str(ROOT / "examples" / "pipelines" / "compress.yaml")
    assert main(["run", compress, "--request", REQUEST]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    cells = "".join(line.split("│")[-2].strip() for line in out.splitlines() if "│" in line)
    assert "fallback_sentences_dropped=0" in cells
