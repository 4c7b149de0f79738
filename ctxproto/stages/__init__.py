"""Built-in stages, one per module, registered by name for config files."""

from ctxproto.stages.base import Stage, StageReport, StageResult, Transformed
from ctxproto.stages.dedup import Dedup
from ctxproto.stages.recency_window import RecencyWindow
from ctxproto.stages.registry import available_stages, get_stage_class, register_stage
from ctxproto.stages.relevance_filter import RelevanceFilter
from ctxproto.stages.retriever import Retriever
from ctxproto.stages.semantic_cache import SemanticCacheLookup
from ctxproto.stages.summarizer import Summarizer
from ctxproto.stages.token_compressor import TokenCompressor

__all__ = [
    "Dedup",
    "RecencyWindow",
    "RelevanceFilter",
    "Retriever",
    "SemanticCacheLookup",
    "Stage",
    "StageReport",
    "StageResult",
    "Summarizer",
    "TokenCompressor",
    "Transformed",
    "available_stages",
    "get_stage_class",
    "register_stage",
]
