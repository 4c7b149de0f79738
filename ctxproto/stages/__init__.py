"""Built-in stages, one per module, registered by name for config files."""

from ctxproto.stages.base import Stage, StageReport, StageResult, Transformed
from ctxproto.stages.recency_window import RecencyWindow
from ctxproto.stages.registry import available_stages, get_stage_class, register_stage

__all__ = [
    "RecencyWindow",
    "Stage",
    "StageReport",
    "StageResult",
    "Transformed",
    "available_stages",
    "get_stage_class",
    "register_stage",
]
