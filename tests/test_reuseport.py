"""Each server worker listens on its own SO_REUSEPORT socket (service.reuseport):
the tripwire for the BentoML and uvicorn internals it relies on, the socket swap on
real sockets, and a real `bentoml serve` with two workers where connections opened in
the same instant reach both workers."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest
from service_fixtures import free_port, serving

from fsp.settings import PROJECT_ROOT
from service import reuseport


# -- tripwire: what service.reuseport assumes about BentoML 1.4 and uvicorn -----------------
def _code(function) -> str:
    """A function's source without any whitespace (a reformatting is no change)."""
    return re.sub(r"\s+", "", inspect.getsource(function))


def test_bentoml_starts_workers_as_the_module_with_the_shared_socket_fd() -> None:
    """`bentoml serve` runs each worker as `python -m _bentoml_impl.worker.service` with
    `--fd <the supervisor's listening socket>` and `--backlog`. If this fails after an
    upgrade, re-read _bentoml_impl/server/serving.py and adapt service/reuseport.py."""
    from _bentoml_impl.server import serving

    assert serving._SERVICE_WORKER_SCRIPT == reuseport.WORKER_MODULE
    source = _code(serving.serve_http)
    assert '"-m",_SERVICE_WORKER_SCRIPT,' in source
    assert f'"{reuseport.FD_OPTION}",f"$(circus.sockets.{{API_SERVER_NAME}})",' in source
    assert f'"{reuseport.BACKLOG_OPTION}",str(backlog),' in source
    # the socket is one shared CircusSocket (no per-process socket of circus's own)
    assert "CircusSocket(name=API_SERVER_NAME," in source
    assert "so_reuseport" not in source


def test_bentoml_worker_serves_the_fd_it_is_given_with_uvicorn() -> None:
    """The worker serves descriptor N itself (`socket.socket(fileno=fd)` handed to
    uvicorn), so what N refers to when uvicorn starts listening is what it serves."""
    from _bentoml_impl.worker import service as worker

    options = {p.name: p.opts for p in worker.main.params}
    assert options["fd"] == [reuseport.FD_OPTION]
    assert options["backlog"] == [reuseport.BACKLOG_OPTION]
    source = _code(worker.main.callback)
    assert "socket=socket.socket(fileno=fd)" in source
    assert "uvicorn.Server(config).run(sockets=[socket])" in source
    assert source.index("service=load(") < source.index("socket.socket(fileno=fd)")


def test_startup_hooks_run_before_uvicorn_listens() -> None:
    """BentoML runs `@bentoml.on_startup` hooks in the lifespan startup
    (create_instance), and uvicorn completes the lifespan startup before it creates its
    server on the given sockets: the swap happens before anything listens on N."""
    import uvicorn.server
    from _bentoml_impl.server.app import ServiceAppFactory

    startup = _code(uvicorn.server.Server.startup)
    assert startup.index("awaitself.lifespan.startup()") < startup.index(
        "loop.create_server(create_protocol,sock=sock"
    )
    assert "__bentoml_startup_hook__" in _code(ServiceAppFactory.create_instance)
    assert "awaitself.create_instance(app)" in _code(ServiceAppFactory.lifespan)


def test_the_service_takes_its_own_listener_on_startup() -> None:
    from service.service import FirstSessionRisk

    hook = FirstSessionRisk.inner.own_listener  # type: ignore[attr-defined]
    assert getattr(hook, "__bentoml_startup_hook__", False)
    assert "listen_on_own_socket()" in inspect.getsource(hook)


# -- the adapter itself -------------------------------------------------------------------
def test_worker_fd_only_in_a_bentoml_worker() -> None:
    argv = ["x", "--fd", "7", "--service-name", "s"]
    assert reuseport.worker_listen_fd(argv, reuseport.WORKER_MODULE) == 7
    assert reuseport.worker_listen_fd(["x", "--fd=9"], reuseport.WORKER_MODULE) == 9
    assert reuseport.worker_listen_fd(argv, "bentoml.__main__") is None  # the supervisor
    assert reuseport.worker_listen_fd(["x"], reuseport.WORKER_MODULE) is None
    assert reuseport.worker_listen_fd() is None  # this test process


def test_unix_socket_is_left_alone(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "s.sock"))
        s.listen(8)
        assert reuseport.take_own_listener(s.fileno()) is False
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def _listening(fd: int) -> bool:
    with socket.socket(fileno=os.dup(fd)) as s:
        return bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT balancing as on Linux")
def test_two_workers_get_their_own_sockets_and_share_a_burst() -> None:
    """As circus does: one listening socket, two forked workers given its descriptor.
    After the swap each listens on its own socket at that descriptor, the shared one
    listens no more, and a burst of connections opened at once reaches both."""
    shared = socket.socket()
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    shared.bind(("127.0.0.1", 0))
    shared.listen(2048)
    shared.setblocking(False)
    port = shared.getsockname()[1]
    fd = shared.fileno()
    workers = []
    for _ in range(2):
        ready_r, ready_w = os.pipe()
        count_r, count_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: swap, then accept until the burst is over
            code = 1
            try:
                assert reuseport.take_own_listener(fd)
                own = socket.socket(fileno=fd)
                assert own.getsockname()[1] == port and _listening(fd)
                os.write(ready_w, b"1")
                own.settimeout(2.0)
                accepted = []
                try:
                    while True:
                        accepted.append(own.accept()[0])
                except TimeoutError:
                    pass
                os.write(count_w, str(len(accepted)).encode())
                code = 0
            finally:
                os._exit(code)
        assert os.read(ready_r, 1) == b"1"
        workers.append((pid, count_r))
    try:
        assert not _listening(fd)  # the supervisor's socket is out of the way...
        assert shared.getsockname()[1] == port  # ...but still holds the port
        burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        counts = []
        for pid, count_r in workers:
            _, status = os.waitpid(pid, 0)
            assert status == 0
            counts.append(int(os.read(count_r, 16)))
        for c in burst:
            c.close()
    finally:
        shared.close()
    assert sum(counts) == 64
    assert min(counts) > 0, counts  # all 64 to one worker: p = 2**-63


# -- a real `bentoml serve` with two workers ---------------------------------------------------
TINY_SERVICE = """
import os

import bentoml

from service.reuseport import listen_on_own_socket


@bentoml.service(workers=2, logging={"access": {"enabled": False}})
class Tiny:
    @bentoml.on_startup
    def own_listener(self) -> None:
        listen_on_own_socket()

    @bentoml.api
    def pid(self) -> int:
        return os.getpid()
"""


async def _pids_over_burst(port: int, n: int) -> list[int]:
    """n keep-alive connections opened in the same instant; each asks for the worker's pid."""
    streams = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(n)))
    body = b"{}"
    request = (
        b"POST /pid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return int(await reader.readexactly(length))

    try:
        return list(await asyncio.gather(*(ask(r, w) for r, w in streams)))
    finally:
        for _, w in streams:
            w.close()


@pytest.mark.services
@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT balancing as on Linux")
def test_bentoml_serve_spreads_a_client_pool_over_both_workers(tmp_path: Path) -> None:
    (tmp_path / "tiny_service.py").write_text(textwrap.dedent(TINY_SERVICE))
    port = free_port()
    env = dict(os.environ)
    env.update(
        BENTOML_HOME=str(tmp_path / "bentoml"),
        BENTOML_DO_NOT_TRACK="True",
        PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]),
    )
    bentoml_cli = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml_cli), "serve", "tiny_service:Tiny", "--port", str(port)]
    command += ["--host", "127.0.0.1"]
    with serving(command, env, port, tmp_path / "serve.log", cwd=tmp_path):
        # both workers up: readiness answered by one of them, so ask until both answered
        deadline = time.monotonic() + 60
        seen: set[int] = set()
        while len(seen) < 2 and time.monotonic() < deadline:
            seen.update(asyncio.run(_pids_over_burst(port, 32)))
        assert len(seen) == 2, (tmp_path / "serve.log").read_text()[-3000:]
        for _ in range(3):  # every burst of 32 reaches both (all to one: p = 2**-31)
            pids = asyncio.run(_pids_over_burst(port, 32))
            assert len(set(pids)) == 2, pids
