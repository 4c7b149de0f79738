"""The bundled LLM runtime, imported as ``ctxproto.runtime``.

Importing this package is cheap; torch and transformers load on first use.
"""

from ctxproto.runtime.loader import cache_dir, load_causal_lm, load_tokenizer

__all__ = ["cache_dir", "load_causal_lm", "load_tokenizer"]
