"""Each server worker listens on a socket of its own (SO_REUSEPORT), so the kernel
spreads new connections over the workers.

Why: `bentoml serve` binds ONE listening socket in its supervisor (circus) and hands
the same socket to every worker (`--fd N`). When a client's pool opens its keep-alive
connections in the same instant, the worker that wakes first accepts the whole burst
(uvloop accepts until the queue is empty) and the other worker idles for as long as
those connections live: /predict at c=8 ran at ~60 % of the throughput it has when
the same clients connect 10 ms apart. With a socket per worker in one SO_REUSEPORT
group, the kernel picks the worker of each connection by the hash of its addresses,
whoever is awake. BentoML 1.4 offers no setting for this (circus can do it, but
BentoML's watcher does not name the socket where circus looks for it).

What this module touches that is not a public API (checked by
tests/test_reuseport.py, which fails when an upgrade changes any of it):

1. BentoML's worker process is `python -m _bentoml_impl.worker.service ... --fd N`
   (`_bentoml_impl.server.serving.serve_http`), where N is the supervisor's shared
   listening socket, and it serves it as `uvicorn.Server(config).run(sockets=
   [socket.socket(fileno=fd)])`: so replacing what descriptor N refers to, before
   uvicorn starts listening on it, makes uvicorn serve the replacement.
2. uvicorn runs the application's lifespan startup (where BentoML creates the service
   instance and runs its `@bentoml.on_startup` hooks) before it creates its server on
   those sockets: `take_own_listener` runs from such a hook, once the worker is ready
   to answer, so a restarted worker gets connections only when it can serve them.

What it does, in the worker only (anywhere else it does nothing):
- marks the shared socket SO_REUSEPORT (a flag on the socket: the supervisor's copy is
  the same socket), binds a new SO_REUSEPORT socket to the same address, listens;
- stops the shared socket from listening (`shutdown(SHUT_RD)` of a listening socket
  on Linux), so no connection waits in a queue that no worker reads any more: the
  supervisor keeps it open and bound, which keeps the port for restarted workers;
- puts the new socket at descriptor N (`dup2`), where uvicorn will listen.
"""

# private-api: _bentoml_impl's worker (--fd N shared socket), uvicorn's lifespan order

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys

WORKER_MODULE = "_bentoml_impl.worker.service"
"""The module BentoML runs as `__main__` of each server worker."""

FD_OPTION = "--fd"
"""The worker's command-line option naming the shared listening socket's descriptor."""

BACKLOG_OPTION = "--backlog"
DEFAULT_BACKLOG = 2048
"""BentoML's default listen backlog (`api_server.backlog`), when the worker names none."""

logger = logging.getLogger(__name__)


def _option(argv: list[str], name: str) -> str | None:
    """The value of a click option given as `--name V` or `--name=V` (the last one)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
    return found


def worker_listen_fd(argv: list[str] | None = None, main_module: str | None = None) -> int | None:
    """The shared socket's descriptor when this process is a BentoML server worker, else
    None (the `bentoml serve` supervisor, `bentoml build`, tests, a plain import)."""
    if main_module is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        main_module = getattr(spec, "name", None)
    if main_module != WORKER_MODULE:
        return None
    value = _option(sys.argv if argv is None else argv, FD_OPTION)
    return int(value) if value is not None and value.isdigit() else None


def take_own_listener(fd: int, backlog: int = DEFAULT_BACKLOG) -> bool:
    """Put a listening socket of this process's own, SO_REUSEPORT, bound to the same
    address as the socket at `fd`, at `fd`. Returns False (and changes nothing) when
    `fd` is not a TCP socket bound to a port (a Unix socket, say)."""
    shared = socket.socket(fileno=os.dup(fd))
    try:
        if shared.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        if shared.type != socket.SOCK_STREAM:
            return False
        address = shared.getsockname()
        if not address[1]:
            return False
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        try:
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if shared.family == socket.AF_INET6:
                v6only = shared.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
                own.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            own.bind(address)
            own.listen(backlog)
            own.setblocking(False)  # as circus hands its sockets over
            with contextlib.suppress(OSError):  # another worker stopped it already
                shared.shutdown(socket.SHUT_RD)  # stops listening: for every process
            os.dup2(own.fileno(), fd)
        finally:
            own.close()
        return True
    finally:
        shared.close()


def listen_on_own_socket() -> None:
    """In a BentoML server worker: `take_own_listener` on the socket the worker was
    given. Elsewhere: nothing. A failure is raised (the worker exits and is restarted)
    rather than leaving a worker on a socket no connection reaches."""
    fd = worker_listen_fd()
    if fd is None:
        return
    backlog = _option(sys.argv, BACKLOG_OPTION)
    taken = take_own_listener(
        fd, int(backlog) if backlog and backlog.isdigit() else DEFAULT_BACKLOG
    )
    if taken:
        logger.info("worker %d listens on its own SO_REUSEPORT socket", os.getpid())
