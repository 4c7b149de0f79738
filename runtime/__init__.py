"""The bundled LLM runtime, imported as ``ctxproto.runtime``.

``Engine`` runs a transformers causal LM with a radix-tree prefix-KV cache
(``RadixKVCache``) and batched decoding; ``LocalBackend`` and ``OpenAIBackend``
put it and any OpenAI-compatible server behind one ``Backend`` interface, and
``ScriptedBackend`` answers from a script, for tests. The engine's HTTP
server (``ctxproto.serve.OpenAIServer``) lives with the proxy it shares a stack with.

Importing this package is cheap; torch and transformers load on first use.
"""

from ctxproto.models.loader import cache_dir, load_causal_lm, load_tokenizer
from ctxproto.runtime.backends import (
    Backend,
    CompletionStream,
    LocalBackend,
    OpenAIBackend,
    ScriptedBackend,
)
from ctxproto.runtime.engine import Engine
from ctxproto.runtime.params import Completion, GenerationParams, RequestMetrics
from ctxproto.runtime.radix_cache import CacheStats, RadixKVCache
from ctxproto.runtime.request import RequestHandle

__all__ = [
    "Backend",
    "CacheStats",
    "Completion",
    "CompletionStream",
    "Engine",
    "GenerationParams",
    "LocalBackend",
    "OpenAIBackend",
    "RadixKVCache",
    "RequestHandle",
    "RequestMetrics",
    "ScriptedBackend",
    "cache_dir",
    "load_causal_lm",
    "load_tokenizer",
]
