"""What the processor is, read from Linux's ``/proc/cpuinfo``.

Two readers need it: the kernel build, whose cache is keyed by the CPU it was
compiled for (``kernels.py``), and the benchmarks, which print the machine with
their figures (``ctxproto.bench.machine``). x86 lists ``model name`` and
``flags``; arm64 lists ``CPU implementer``, ``CPU part`` and ``Features``
instead. Only the first processor's block is read: the others repeat it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CPUINFO", "cpu_features", "read_cpuinfo"]

CPUINFO = Path("/proc/cpuinfo")


def read_cpuinfo(path: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields, whitespace collapsed; empty without the file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), " ".join(value.split()))
    return fields


def cpu_features(fields: dict[str, str]) -> set[str] | None:
    """The instruction-set extensions (x86 ``flags``, arm64 ``Features``); None when
    the fields do not say."""
    listed = fields.get("flags", fields.get("Features"))
    return None if listed is None else set(listed.split())
