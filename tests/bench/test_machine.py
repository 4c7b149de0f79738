"""``ctxproto.bench.machine``: every benchmark names the machine its figures come from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctxproto.bench.machine import describe_machine, machine_line
from ctxproto.cli.main import main

# Two processors of a virtual machine, as Linux lists them: only the first is read.
CPUINFO = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC 9R14 96-Core Processor
flags		: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_tile

processor	: 1
vendor_id	: GenuineIntel
model name	: something else
flags		: amx_bf16 amx_int8
"""


def test_the_first_processor_names_the_cpu_and_the_extensions_the_kernels_use(
    tmp_path: Path,
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO, encoding="utf-8")
    machine = describe_machine(cpuinfo)
    assert machine["cpu"] == "AMD EPYC 9R14 96-Core Processor"
    assert machine["cpu_id"] == "AuthenticAMD family 25 model 17"
    # listed flags only, in CPU_FEATURES' order; the second processor's AMX is not this one's
    assert machine["cpu_features"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert machine["logical_cores"] >= 1
    line = machine_line(machine)
    assert line.startswith("AMD EPYC 9R14 96-Core Processor (AuthenticAMD family 25 model 17)")
    assert "avx512_bf16" in line and "amx" not in line


def test_without_cpuinfo_the_platform_still_names_a_cpu(tmp_path: Path) -> None:
    machine = describe_machine(tmp_path / "absent")
    assert machine["cpu"]
    assert machine["cpu_id"] is None
    assert machine["cpu_features"] == []
    assert "no AVX2" in machine_line(machine)


@pytest.mark.models
def test_a_benchmark_prints_the_machine_with_its_figures(capsys: Any) -> None:
    assert main(["bench", "rag-retention", "--sessions", "1", "--turns", "2", "--essays", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["machine"] == describe_machine()
