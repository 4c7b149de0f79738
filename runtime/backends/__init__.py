"""LLM backends behind one interface.

The local engine, any OpenAI-compatible server, and a scripted backend for tests.
"""

from ctxproto.runtime.backends.base import Backend, CompletionStream
from ctxproto.runtime.backends.local import LocalBackend
from ctxproto.runtime.backends.openai import OpenAIBackend
from ctxproto.runtime.backends.scripted import Responder, ScriptedBackend, ScriptedRequest
from ctxproto.runtime.params import Completion, GenerationParams, RequestMetrics

__all__ = [
    "Backend",
    "Completion",
    "CompletionStream",
    "GenerationParams",
    "LocalBackend",
    "OpenAIBackend",
    "RequestMetrics",
    "Responder",
    "ScriptedBackend",
    "ScriptedRequest",
]
