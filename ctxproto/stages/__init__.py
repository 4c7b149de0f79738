"""Stages, one per module, registered by name for config files.

The package exports the stage contract and the registry. Each built-in stage
lives in its own module (``from ctxproto.stages.dedup import Dedup``) and is also
reachable here by its class name (``ctxproto.stages.Dedup``), resolved through
the registry, so a new stage needs no edit to this file.
"""

from ctxproto.stages.base import Stage, StageReport, StageResult, Transformed
from ctxproto.stages.registry import (
    available_stages,
    builtin_stages,
    get_stage_class,
    register_stage,
)

__all__ = [
    "Stage",
    "StageReport",
    "StageResult",
    "Transformed",
    "available_stages",
    "builtin_stages",
    "get_stage_class",
    "register_stage",
]


def __getattr__(name: str) -> type[Stage]:
    """A built-in stage class by its class name (``ctxproto.stages.RecencyWindow``)."""
    if not name.startswith("_"):
        for stage in builtin_stages().values():
            if stage.__name__ == name:
                return stage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
