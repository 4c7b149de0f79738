"""The machine a benchmark ran on, printed with its figures.

A ratio of two paths moves with the CPU: the development machine's two cores
have been an AMD EPYC and an Intel Xeon, and the support chat's headline ratio
was 0.88x in the seventh round and 1.15x on the Xeon in the ninth
(``docs/benchmarks.md``). Every ``ctxproto bench`` command therefore
prints the processor, its core count and the vector extensions the kernels can
use next to its figures, so that a figure copied into the docs carries the
machine it was measured on.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

from ctxproto.models.cpu_info import CPUINFO, cpu_features, read_cpuinfo

__all__ = [
    "CPU_FEATURES",
    "TERMINAL_COLUMNS",
    "Machine",
    "describe_machine",
    "machine_line",
    "print_figures",
    "print_wrapped",
]

TERMINAL_COLUMNS = 80
"""The width the human-readable reports fit: a terminal's default, and a pasted log's."""

CPU_FEATURES: tuple[str, ...] = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)
"""The extensions that decide which kernels run fast (x86 ``flags`` and arm64
``Features`` names in ``/proc/cpuinfo``)."""


class Machine(TypedDict):
    """What ``describe_machine`` reports (a JSON object in every benchmark's output)."""

    cpu: str
    cpu_id: str | None
    """x86: vendor, family and model; arm64: implementer and part. A virtual
    machine's model name is often generic ("Intel Xeon Processor"); these are not."""
    logical_cores: int | None
    usable_cores: int | None
    """The cores this process may run on (its CPU affinity); a cgroup quota is not seen."""
    cpu_features: list[str] | None
    """Those of ``CPU_FEATURES`` the CPU lists; None where the system does not list them.
    A virtual machine may list one it does not enable: AMX, on the ninth round's."""
    os: str
    python: str
    torch: str | None
    gpu: str | None
    """The first CUDA device, when the benchmark imported torch (the models' runs)."""


def describe_machine(cpuinfo: Path = CPUINFO) -> Machine:
    """The processor, cores, vector extensions, and the versions that set the kernels."""
    fields = read_cpuinfo(cpuinfo)
    features = cpu_features(fields)
    return Machine(
        cpu=fields.get("model name") or platform.processor() or platform.machine(),
        cpu_id=_cpu_id(fields),
        logical_cores=os.cpu_count(),
        usable_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        cpu_features=None if features is None else [f for f in CPU_FEATURES if f in features],
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        torch=_version("torch"),
        gpu=_gpu(),
    )


def machine_line(machine: Machine) -> str:
    """``describe_machine``'s answer in one line, for the human-readable reports."""
    cpu_id = f" ({machine['cpu_id']})" if machine["cpu_id"] else ""
    cores = machine["usable_cores"] or machine["logical_cores"]
    listed = machine["cpu_features"]
    if listed is None:
        features = "extensions unknown"
    else:
        features = ", ".join(listed) or "none of " + ", ".join(CPU_FEATURES[:2])
    gpu = f"; {machine['gpu']}" if machine["gpu"] else ""
    return f"{machine['cpu']}{cpu_id}, {cores or '?'} cores ({features}){gpu}"


def _cpu_id(fields: dict[str, str]) -> str | None:
    labelled = (
        ("vendor_id", ""),
        ("cpu family", "family "),
        ("model", "model "),
        ("CPU implementer", "implementer "),
        ("CPU part", "part "),
    )
    parts = [f"{label}{fields[key]}" for key, label in labelled if key in fields]
    return " ".join(parts) or None


def _version(package: str) -> str | None:
    """The installed distribution's version; None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> str | None:
    """The first CUDA device's name, when the benchmark already imported torch."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def print_figures(
    figures: dict[str, Any],
    *,
    as_json: bool,
    table: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Print a ``ctxproto bench`` command's figures with the machine they were measured on
    (added under ``machine``): one JSON object with ``--json``; otherwise ``table``, or
    the JSON indented where the command has no table. Returns the exit code, 0.

    The JSON is strict (``print_json``): a figure that could not be measured, a NaN
    or an infinity, is ``null``."""
    from ctxproto.cli.main import print_json

    figures["machine"] = describe_machine()
    if as_json:
        print_json(figures)
    elif table is None:
        print(json.dumps(figures, indent=2))
    else:
        table(figures)
    return 0


def print_wrapped(text: str) -> None:
    """One line of a human-readable report, folded at spaces to ``TERMINAL_COLUMNS``
    with the continuation indented, so that a long CPU name or path stays readable."""
    print(
        textwrap.fill(
            text,
            width=TERMINAL_COLUMNS,
            subsequent_indent="  ",
            break_long_words=False,
            break_on_hyphens=False,
        )
    )
