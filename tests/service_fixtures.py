"""Fixtures of the service tests: a seeded database of their own (they store
predictions, so they never write to the shared trained world), the Bento built by
`fsp package` from the trained world's MLflow store, a real `fsp serve` of it on a
free loopback port, and a TCP proxy in front of the database that a test can cut
and restore (database down, then back)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fsp.settings import PROJECT_ROOT

READY_TIMEOUT_S = 180.0
READY_IN_A_ROW = 12
"""Consecutive /readyz answers of 200, each on a fresh connection, before a served
Bento counts as ready: each of its two workers listens on a socket of its own and
gets ready on its own, so one 200 may come from the first worker only."""
__all__ = [
    "READY_TIMEOUT_S",
    "DbProxy",
    "Server",
    "free_port",
    "fsp_serve",
    "serving",
    "wait_until",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, every: float = 0.2) -> bool:
    """Poll `check()` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(every)
    return False


@dataclass(frozen=True)
class Server:
    """A server a test started: where it answers and where it logs."""

    base_url: str
    port: int
    log: Path


def _all_ready(process: subprocess.Popen, base: str, in_a_row: int) -> bool:
    return process.poll() is None and all(
        httpx.get(f"{base}/readyz").status_code == 200 for _ in range(in_a_row)
    )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (its workers too), SIGKILL if slow."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def serving(
    command: list[str], env: dict[str, str], port: int, log: Path, cwd: Path = PROJECT_ROOT
) -> Iterator[Server]:
    """Run `command` (a server on 127.0.0.1:`port`) in a process group of its own, its
    output in `log`; yield once /readyz answers 200 READY_IN_A_ROW times in a row (the
    test fails with the log's tail if it never does); stop the group afterwards."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        base = f"http://127.0.0.1:{port}"
        try:
            if not wait_until(lambda: _all_ready(process, base, READY_IN_A_ROW), READY_TIMEOUT_S):
                out.flush()
                pytest.fail(f"the server did not get ready ({log}):\n{log.read_text()[-3000:]}")
            yield Server(base, port, log)
        finally:
            _stop(process)


@contextlib.contextmanager
def fsp_serve(log_dir: Path, **settings: str) -> Iterator[Server]:
    """`fsp serve` on a free loopback port with `settings` (BENTOML_HOME, DATABASE_URL,
    ...) over this process's environment; its log in `log_dir`."""
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOST"}  # loopback default
    env.update({"BENTOML_DO_NOT_TRACK": "True", **settings})
    port = free_port()
    command = [str(Path(sys.executable).parent / "fsp"), "serve", "--port", str(port)]
    with serving(command, env, port, log_dir / f"serve-{port}.log") as server:
        yield server


class DbProxy:
    """A TCP forwarder 127.0.0.1:port -> the PostgreSQL server (TCP or Unix socket).

    `stop()` closes the listener and every forwarded connection (the database looks
    down); `start()` listens again on the same port (it is back)."""

    def __init__(self, url: str) -> None:
        params = conninfo_to_dict(url)
        host = str(params.get("host") or "127.0.0.1")
        port = int(params.get("port") or 5432)
        self.upstream: tuple | str = (
            f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
        )
        self.port = free_port()
        params.update(host="127.0.0.1", port=str(self.port))
        self.url = make_conninfo("", **params)
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.connect(self.upstream)
        return upstream

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, target):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accepting thread (Linux)
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()
