"""``ctxproto.bench.machine``: every benchmark names the machine its figures come from."""

from __future__ import annotations

from pathlib import Path

from ctxproto.bench.machine import describe_machine, machine_line, print_figures
from ctxproto.models.cpu_info import cpu_features, read_cpuinfo

# Two processors of a virtual machine, as Linux lists them: only the first is read.
X86 = """processor	: 0
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

ARM64 = """
processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes crc32 asimddp sve i8mm bf16
CPU implementer	: 0x41
CPU architecture: 8
CPU part	: 0xd4f
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_first_x86_processor_names_the_cpu_and_the_extensions_the_kernels_use(
    tmp_path: Path,
) -> None:
    machine = describe_machine(write(tmp_path, X86))
    assert machine["cpu"] == "AMD EPYC 9R14 96-Core Processor"
    assert machine["cpu_id"] == "AuthenticAMD family 25 model 17"
    # listed extensions only, in CPU_FEATURES' order; the second processor's AMX is not this one's
    assert machine["cpu_features"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert machine["logical_cores"] is not None and machine["logical_cores"] >= 1
    line = machine_line(machine)
    assert line.startswith("AMD EPYC 9R14 96-Core Processor (AuthenticAMD family 25 model 17), ")
    assert "avx512_bf16" in line and "amx" not in line


def test_an_arm64_core_is_named_by_implementer_and_part_with_its_features(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, ARM64)
    assert read_cpuinfo(path)["CPU part"] == "0xd4f"  # a leading blank line is skipped
    machine = describe_machine(path)
    assert machine["cpu_id"] == "implementer 0x41 part 0xd4f"
    assert machine["cpu_features"] == ["asimd", "asimddp", "i8mm", "bf16", "sve"]


def test_without_cpuinfo_the_extensions_are_unknown_not_absent(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    assert read_cpuinfo(missing) == {}
    assert cpu_features({}) is None
    machine = describe_machine(missing)
    assert machine["cpu"]  # the platform's name for it
    assert machine["cpu_id"] is None and machine["cpu_features"] is None
    assert "extensions unknown" in machine_line(machine)


def test_figures_print_with_the_machine_as_json_or_as_the_commands_table(capsys) -> None:
    import json

    tables: list[dict[str, object]] = []
    assert print_figures({"ratio": 1.5}, as_json=True, table=tables.append) == 0
    line = capsys.readouterr().out
    assert json.loads(line) == {"ratio": 1.5, "machine": describe_machine()}
    assert line.count("\n") == 1 and not tables  # one object, one line
    print_figures({"ratio": 1.5}, as_json=False, table=tables.append)
    assert tables == [{"ratio": 1.5, "machine": describe_machine()}]
    assert capsys.readouterr().out == ""
    print_figures({"ratio": 1.5}, as_json=False)  # no table: the JSON, indented
    assert json.loads(capsys.readouterr().out)["ratio"] == 1.5


def test_a_figure_not_measured_is_null_in_the_json_not_nan(capsys) -> None:
    import json

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    print_figures({"ratio": float("nan"), "p95_ms": {"engine": float("inf")}}, as_json=True)
    figures = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert figures["ratio"] is None and figures["p95_ms"] == {"engine": None}
