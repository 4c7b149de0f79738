"""The human-readable reports of ``ctxproto bench`` fit an 80-column terminal, even on a
machine whose processor name and extensions make a long line."""

from __future__ import annotations

from typing import Any

import pytest

from ctxproto.bench.chat import compare_paths
from ctxproto.bench.chat_paths import TurnRecord
from ctxproto.bench.machine import Machine

LONG_MACHINE = Machine(
    cpu="Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
    cpu_id="GenuineIntel family 6 model 143",
    logical_cores=2,
    usable_cores=2,
    cpu_features=["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16"],
    os="Linux 6.8.0-1015-gcp",
    python="3.11.9",
    torch="2.5.1",
    gpu=None,
)


@pytest.fixture
def long_machine(monkeypatch: pytest.MonkeyPatch) -> Machine:
    monkeypatch.setattr("ctxproto.bench.machine.describe_machine", lambda: LONG_MACHINE)
    return LONG_MACHINE


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def rows(seconds: list[float]) -> list[TurnRecord]:
    return [TurnRecord("s", i + 1, "chat", 100, 100, 10, 1.0, s) for i, s in enumerate(seconds)]


def test_the_suite_report_fits_80_columns(
    long_machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    from ctxproto.bench.machine import print_figures
    from ctxproto.bench.suite import WORKLOADS, _print_tables

    result: dict[str, Any] = compare_paths({"engine": rows([1.0]), "ctxproto": rows([0.5])})
    size = WORKLOADS[3].full
    result["workload"] = {**vars(size), "paths": list(WORKLOADS[3].paths)}
    print_figures({"quick": False, "workloads": {"concurrent": result}}, as_json=False,
                  table=_print_tables)  # fmt: skip
    out = capsys.readouterr().out
    assert widest(out) <= 80, out
    assert "Intel(R) Xeon(R) Platinum" in out and "amx_bf16" in out


def test_the_prefix_report_fits_80_columns(
    long_machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    from ctxproto.bench.machine import print_figures
    from ctxproto.bench.prefix import _print_table

    figures = {"ttft_cold_ms": 812.25, "cached_ttft_speedup": 5.5, "requests": 8}
    print_figures(figures, as_json=False, table=_print_table)
    out = capsys.readouterr().out
    assert widest(out) <= 80, out
    assert "amx_bf16" in out


@pytest.mark.parametrize("command", ["decode", "stages"])
def test_decode_and_stages_print_one_figure_a_line_in_80_columns(
    command: str,
    long_machine: Machine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ctxproto.cli.main import main

    names = ("transformers", "reserved_kv", "split_cores", "engine", "engine_int8_head")
    figures = {
        "step_ms": {name: 61.5 for name in names},
        "speedup_vs_transformers": {name: 1.25 for name in names},
    }
    module = f"ctxproto.bench.{command}"
    monkeypatch.setattr(f"{module}.run", lambda *args, **kwargs: dict(figures))
    extra = ["--support", "0", "--predicted", "0"] if command == "decode" else []
    assert main(["bench", command, *extra]) == 0
    out = capsys.readouterr().out
    assert widest(out) <= 80, out
    assert "reserved_kv" in out and "amx_bf16" in out
