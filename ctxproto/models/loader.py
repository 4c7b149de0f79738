"""Loading causal LMs offline, with the GGUF conversion cached.

transformers de-quantizes a GGUF file into a full-precision model on every load
(about 20 s for the embedded SmolLM2-135M on 2 CPU cores). We do it once and
keep the result as safetensors under the user cache folder
(``$CTXPROTO_CACHE_DIR`` or ``~/.cache/ctxproto``), so later loads take about a
second. The cache entry is written to a temporary folder and renamed into
place, so a crash mid-conversion never leaves a half-written model behind.

A folder or file the caller named that holds no model transformers can load is
a ``ConfigError`` naming it (the fix is another path); the bundled model, a
Hugging Face cache entry or a converted copy that does not load is a
``ModelNotAvailableError`` saying what repairs it, and a cache folder that cannot
be written one naming the folder and ``CTXPROTO_CACHE_DIR``: transformers' own
``ValueError``/``OSError`` say neither which setting was wrong nor what to do.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from ctxproto._extras import quiet_transformers, require
from ctxproto.errors import ConfigError, ModelNotAvailableError, OperationalError
from ctxproto.models.device import check_device
from ctxproto.models.openmp import release_thread_pool
from ctxproto.models.resolver import ResolvedModel, resolve_lm

__all__ = [
    "cache_dir",
    "converted_model_dir",
    "load_causal_lm",
    "load_tokenizer",
    "loading_model",
]


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
    # The staging folder first: an unwritable cache fails before a 20 s conversion.
    with _writing_cache(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        source = str(Path(resolved.location) / str(resolved.gguf_file))
        with loading_model(source, "GGUF model", remedy=resolved.remedy):
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                resolved.location, gguf_file=resolved.gguf_file, local_files_only=True
            )
            model = transformers.AutoModelForCausalLM.from_pretrained(
                resolved.location, gguf_file=resolved.gguf_file, local_files_only=True
            )
        # The weights are de-quantized in memory; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with _writing_cache(target.parent):
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / "config.json").exists():  # not another process winning the race
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _writing_cache(folder: Path) -> Iterator[None]:
    """An ``OSError`` writing the cache (read-only, full) as the setting that fixes it."""
    try:
        yield
    except OSError as exc:
        raise ModelNotAvailableError(
            f"cannot write the converted model under {folder} ({exc.strerror or exc}); "
            "point CTXPROTO_CACHE_DIR at a writable folder"
        ) from exc


_REASON_CHARS = 160
"""Most of transformers' first line quoted: some of its messages run to a page."""


_LM_EXPECTED = "a model folder, a .gguf file or a cached model id"
"""What a causal LM name may be, said when a path the caller gave holds none."""


@contextmanager
def loading_model(
    name: str,
    what: str,
    location: str | None = None,
    *,
    remedy: str | None = None,
    expected: str = _LM_EXPECTED,
) -> Iterator[None]:
    """transformers' ``OSError``/``ValueError`` while loading ``name``, as the error it is.

    ``name`` was resolved to files that exist, so a load that fails means they hold
    no ``what`` that loads (an empty folder, a ``config.json`` without weights, a
    file that is not GGUF). For a path the caller gave (``remedy`` is ``None``) that
    is a ``ConfigError`` naming it and ``expected``: a path to fix. For files the
    caller did not pick (the bundled model, a cache entry, a converted copy) it is a
    ``ModelNotAvailableError`` ending with ``remedy``: another path would not help.
    Either quotes the first line of transformers' reason; ``location``, where it is
    not the name (a GGUF model's conversion in the cache), is named too.

    An ``OSError`` with an ``errno`` (too many open files, permission denied, disk
    full, I/O error) is this machine failing, not the files' contents: an
    ``OperationalError``, whatever the name, so a server answers it as its own
    failure and the caller is not told to change a path that is fine.
    """
    try:
        yield
    except (OSError, ValueError) as exc:
        where = f" ({location})" if location and location != name else ""
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OperationalError(f"reading '{name}'{where} failed: {exc}") from exc
        reason = (str(exc).strip().splitlines() or [""])[0][:_REASON_CHARS]
        problem = f"'{name}'{where} holds no {what} that loads ({type(exc).__name__}: {reason})"
        if remedy is not None:
            raise ModelNotAvailableError(f"{problem}; {remedy}") from exc
        raise ConfigError(problem, expected=expected) from exc


def _lm_files(name: str) -> tuple[str, str | None]:
    """Where the causal LM ``name`` loads from, and the ``remedy`` if it does not load.

    A GGUF model loads from its conversion, made from a file that loaded: whoever
    named it, a copy that does not load is repaired by converting it again.
    """
    resolved = resolve_lm(name)
    if not resolved.is_gguf:
        return resolved.location, resolved.remedy
    location = str(converted_model_dir(resolved))
    return location, f"delete {location} to have it converted again"


@lru_cache(maxsize=4)
def load_tokenizer(name: str = "default") -> Any:
    """The tokenizer of a causal LM (shared per process)."""
    transformers = require("transformers", extra="runtime")
    quiet_transformers()
    location, remedy = _lm_files(name)
    with loading_model(name, "tokenizer", location, remedy=remedy):
        return transformers.AutoTokenizer.from_pretrained(location, local_files_only=True)


@lru_cache(maxsize=4)
def load_causal_lm(name: str = "default", device: str = "cpu", dtype: str = "auto") -> Any:
    """A causal LM in eval mode on ``device`` (shared per process: load once, use everywhere).

    ``dtype="auto"`` means float32 on CPU and bfloat16 on CUDA. A device or dtype torch
    does not have is a ``ConfigError`` naming it, before anything is read.
    """
    torch = require("torch", extra="runtime")
    transformers = require("transformers", extra="runtime")
    check_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    weights = getattr(torch, dtype, None)
    if not isinstance(weights, torch.dtype):
        raise ConfigError(
            f"{dtype!r} is not a torch dtype",
            key="dtype",
            expected='"auto", "float32", "bfloat16" or "float16"',
        )
    quiet_transformers()
    location, remedy = _lm_files(name)
    with loading_model(name, "causal LM", location, remedy=remedy):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            location, local_files_only=True, dtype=weights
        )
    model.to(device)
    model.eval()
    release_thread_pool()  # the loading thread keeps no idle workers (models/openmp.py)
    return model
