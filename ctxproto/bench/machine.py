"""The machine a benchmark ran on, printed with its figures.

A ratio of two paths moves with the CPU: with the same code, the support chat's
ctxproto-to-engine ratio was 0.88x on an AMD EPYC with AVX-512 and 1.15x on an
Intel Xeon with AMX (``docs/benchmarks.md``). Every ``ctxproto bench`` command
therefore prints the processor, its core count and the vector extensions the
kernels can use next to its figures, so that a figure copied into the docs
carries the machine it was measured on.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["CPU_FEATURES", "describe_machine", "machine_line"]

CPU_FEATURES: tuple[str, ...] = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
)
"""The extensions that decide which kernels run fast (``/proc/cpuinfo`` flag names)."""


def describe_machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The processor, cores, vector extensions, and the versions that set the kernels."""
    info = _read_cpuinfo(cpuinfo)
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        # A virtual machine's model name is often generic; family and model are not.
        "cpu_id": " ".join(
            f"{label} {info[key]}".strip()
            for key, label in (("vendor_id", ""), ("cpu family", "family"), ("model", "model"))
            if key in info
        )
        or None,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_features": [f for f in CPU_FEATURES if f in flags],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "gpu": _gpu(),
    }


def _read_cpuinfo(path: Path) -> dict[str, str]:
    """The first processor's fields (``model name``, ``flags``...); none without the file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the end of the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), " ".join(value.split()))
    return fields


def _version(package: str) -> str | None:
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


def machine_line(machine: dict[str, Any]) -> str:
    """``describe_machine``'s answer in one line, for the human-readable reports."""
    features = ", ".join(machine["cpu_features"]) or "no AVX2"
    cores = machine["usable_cores"] or machine["logical_cores"]
    gpu = f"; {machine['gpu']}" if machine["gpu"] else ""
    cpu_id = f" ({machine['cpu_id']})" if machine["cpu_id"] else ""
    return f"{machine['cpu']}{cpu_id}, {cores} cores ({features}){gpu}"
