"""Shared fixtures: every model loads once per test session."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def counter() -> Any:
    from ctxproto.tokens import get_counter

    return get_counter()


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The embedded all-MiniLM-L6-v2, shared by every test."""
    from ctxproto.models.embedder import get_embedder

    return get_embedder()


@pytest.fixture(scope="session")
def lm() -> Any:
    """The embedded SmolLM2-135M-Instruct on CPU (float32), shared by every test."""
    from ctxproto.models.loader import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="session")
def lm_tokenizer() -> Any:
    from ctxproto.models.loader import load_tokenizer

    return load_tokenizer()
