"""Loading causal LMs offline, with the GGUF conversion cached.

transformers de-quantizes a GGUF file into a full-precision model on every load
(about 20 s for the embedded SmolLM2-135M on 2 CPU cores). We do it once and
keep the result as safetensors under the user cache folder
(``$CTXPROTO_CACHE_DIR`` or ``~/.cache/ctxproto``), so later loads take about a
second. The cache entry is written to a temporary folder and renamed into
place, so a crash mid-conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from ctxproto._extras import quiet_transformers, require
from ctxproto.models.openmp import release_thread_pool
from ctxproto.models.resolver import ResolvedModel, resolve_lm

__all__ = ["cache_dir", "converted_model_dir", "load_causal_lm", "load_tokenizer"]


def cache_dir() -> Path:
    """The folder ctxproto caches converted models and other derived files in."""
    root = os.environ.get("CTXPROTO_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ctxproto"


def converted_model_dir(resolved: ResolvedModel) -> Path:
    """Where the safetensors conversion of a GGUF model lives (created on first use)."""
    assert resolved.gguf_file is not None
    source = Path(resolved.location) / resolved.gguf_file
    stat = source.stat()
    transformers = require("transformers", extra="runtime")
    tag = f"{source.stem}-{stat.st_size}-tf{transformers.__version__.split('.')[0]}"
    target = cache_dir() / "models" / tag
    if not (target / "config.json").exists():
        _convert_gguf(resolved, target)
    return target


def _convert_gguf(resolved: ResolvedModel, target: Path) -> None:
    transformers = require("transformers", extra="runtime")
    require("gguf", extra="runtime")
    quiet_transformers()
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        resolved.location, gguf_file=resolved.gguf_file
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(
        resolved.location, gguf_file=resolved.gguf_file
    )
    # The weights are de-quantized in memory; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _model_location(name: str) -> str:
    resolved = resolve_lm(name)
    return str(converted_model_dir(resolved)) if resolved.is_gguf else resolved.location


@lru_cache(maxsize=4)
def load_tokenizer(name: str = "default") -> Any:
    """The tokenizer of a causal LM (shared per process)."""
    transformers = require("transformers", extra="runtime")
    quiet_transformers()
    return transformers.AutoTokenizer.from_pretrained(_model_location(name), local_files_only=True)


@lru_cache(maxsize=4)
def load_causal_lm(name: str = "default", device: str = "cpu", dtype: str = "auto") -> Any:
    """A causal LM in eval mode on ``device`` (shared per process: load once, use everywhere).

    ``dtype="auto"`` means float32 on CPU and bfloat16 on CUDA.
    """
    torch = require("torch", extra="runtime")
    transformers = require("transformers", extra="runtime")
    quiet_transformers()
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        _model_location(name), local_files_only=True, dtype=getattr(torch, dtype)
    )
    model.to(device)
    model.eval()
    release_thread_pool()  # the loading thread keeps no idle workers (models/openmp.py)
    return model
