"""ctxproto: lean, prefix-stable prompts inside a token budget.

request -> stages -> assembler (budget, stable prefix first) -> backend -> answer.
"""

from ctxproto.assembler import Assembler
from ctxproto.budget import Budget
from ctxproto.context import ChatRequest, Context
from ctxproto.documents import Document
from ctxproto.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    BudgetError,
    ConfigError,
    CtxprotoError,
    DatasetError,
    ModelNotAvailableError,
    OperationalError,
    StoreError,
    StoreUnavailableError,
    UpstreamStatusError,
    UsageError,
)
from ctxproto.messages import FunctionCall, Message, ToolCall
from ctxproto.pipeline import Pipeline, PipelineResult
from ctxproto.prompt import AssembledPrompt, Section, Stability
from ctxproto.stages import Stage, StageReport, StageResult, register_stage
from ctxproto.stages.recency_window import RecencyWindow
from ctxproto.tokens import HuggingFaceCounter, TiktokenCounter, TokenCounter, get_counter

__version__ = "0.1.0"

__all__ = [
    "AssembledPrompt",
    "Assembler",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "Budget",
    "BudgetError",
    "ChatRequest",
    "ConfigError",
    "Context",
    "CtxprotoError",
    "DatasetError",
    "Document",
    "FunctionCall",
    "HuggingFaceCounter",
    "Message",
    "ModelNotAvailableError",
    "OperationalError",
    "Pipeline",
    "PipelineResult",
    "RecencyWindow",
    "Section",
    "Stability",
    "Stage",
    "StageReport",
    "StageResult",
    "StoreError",
    "StoreUnavailableError",
    "TiktokenCounter",
    "TokenCounter",
    "ToolCall",
    "UpstreamStatusError",
    "UsageError",
    "__version__",
    "get_counter",
    "register_stage",
]
