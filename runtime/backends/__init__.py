"""LLM backends behind one interface: the local engine and any OpenAI-compatible server."""

from ctxproto.runtime.backends.base import Backend, CompletionStream
from ctxproto.runtime.backends.local import LocalBackend
from ctxproto.runtime.backends.openai import OpenAIBackend
from ctxproto.runtime.params import Completion, GenerationParams, RequestMetrics

__all__ = [
    "Backend",
    "Completion",
    "CompletionStream",
    "GenerationParams",
    "LocalBackend",
    "OpenAIBackend",
    "RequestMetrics",
]
