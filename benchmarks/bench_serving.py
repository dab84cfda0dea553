"""Serving speed, side by side in one run: the Bento's /predict against `mlflow models
serve` of the same registered version, on the same machine and the same sessions.

    .venv/bin/python benchmarks/bench_serving.py [--seconds S] [--no-package | --bento TAG]

Uses the configured settings (embedded defaults unless DATABASE_URL etc. are set):
packages the champion (build time, Bento size), starts both servers on loopback
(ready time), then measures req/s and p50/p99 at concurrency 1, 8 and 32 with one
session per request, and rows/s with batches of 1,000. Every loop is bounded by
time and count; both servers are stopped at the end.

Connections are opened the way a client's pool opens them: all at the same instant
("pooled"). At c=8 and c=32 the same load also runs with clients connecting 10 ms
apart ("staggered", as independent callers do), side by side in the same run: a
server whose workers share one listening socket can let one worker accept a whole
burst of connections and leave the other idle, which only the pooled case shows. The
"per worker" column says how many connections each worker process held halfway
through a level (the processes listening on the port, read with psutil).

The Bento is served with FSP_API_KEY set to a key the benchmark makes up, and every
request carries it (`Authorization: Bearer`): the authenticated path is measured.

The two servers do not do the same work: `mlflow models serve` takes the model
input already computed (13 columns) and returns probabilities; the Bento takes the
booking context (tutor, subject, start, student), computes the features as of
now, scores, and explains (top factors). Same model, same 2 worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONCURRENCY = (1, 8, 32)
BATCH_ROWS = 1000
BATCH_CONCURRENCY = 2
MAX_REQUESTS_PER_LEVEL = 200_000
READY_TIMEOUT_S = 120.0
STAGGER_S = 0.01
"""In the staggered case clients connect 10 ms apart, as independent callers do; in
the pooled case all at the same instant, as a client's connection pool does."""
POOL_COMPARED = (8, 32)
"""Concurrencies measured both pooled and staggered."""
API_KEY = secrets.token_urlsafe(24)
"""FSP_API_KEY of the Bento this run starts; every request sends it."""
BATCH_BODIES = 8
"""Distinct 1,000-row bodies cycled through (different tutors, students and slots)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    ready_seconds: float

    def stop(self) -> None:
        """End the server's process group (it was started in its own session)."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)


async def _get_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return int(line.split()[1])


def wait_ready(port: int, path: str, process: subprocess.Popen, started: float) -> float:
    """Seconds from start until `path` answers 200 (bounded)."""
    while time.perf_counter() - started < READY_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        try:
            if asyncio.run(_get_status(port, path)) == 200:
                return time.perf_counter() - started
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} not ready after {READY_TIMEOUT_S} s")


def start(name: str, command: list[str], env: dict[str, str], port: int, ready_path: str):
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{name}-{port}.log", "w")  # noqa: SIM115
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        ready = wait_ready(port, ready_path, process, started)
    except RuntimeError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return Server(name, process, port, ready)


# -- a small keep-alive HTTP/1.1 load generator (cheaper per request than httpx) ----------
def request_bytes(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    elif b"chunked" in head.lower():
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _connection(stream, requests, deadline, done, errors, counter) -> None:
    reader, writer = stream
    try:
        while time.perf_counter() < deadline and counter[0] < MAX_REQUESTS_PER_LEVEL:
            payload = requests[counter[0] % len(requests)]
            counter[0] += 1
            sent = time.perf_counter()
            writer.write(payload)
            status = await _read_response(reader)
            finished = time.perf_counter()
            done.append((finished, finished - sent))
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def _open(port: int, delay: float):
    await asyncio.sleep(delay)
    return await asyncio.open_connection("127.0.0.1", port)


def worker_pids(root_pid: int, port: int) -> list[int]:
    """The processes under `root_pid` that accept connections on `port`: those holding
    a listening socket on it and starting no process of their own (a supervisor that
    only holds the socket for its workers has children)."""
    import psutil

    found = []
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            if process.children():
                continue
            sockets = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets):
            found.append(process.pid)
    return sorted(found)


def connections_per_worker(root_pid: int, port: int) -> list[int]:
    """Established connections each worker holds on `port`, most first."""
    import psutil

    counts = []
    for pid in worker_pids(root_pid, port):
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        counts.append(
            sum(1 for c in sockets if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
        )
    return sorted(counts, reverse=True)


async def _load(
    server: Server | None,
    port: int,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    pooled: bool,
):
    """`concurrency` keep-alive connections, each sending its next request when the
    last one is answered, for `seconds` after the last connection opened. Pooled: all
    connections opened in the same instant; else 10 ms apart, each starting to send as
    soon as it is open. Returns the (finish time, latency) of every request answered
    after all connections were open, the errors, that window's length and how many
    connections each worker held halfway through (when `server` is given)."""
    done: list[tuple[float, float]] = []
    errors: list[int] = []
    counter = [0]
    spread: list[int] = []

    async def sample(at: float) -> None:
        if server is not None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            found = await asyncio.get_running_loop().run_in_executor(
                None, connections_per_worker, server.process.pid, port
            )
            spread.extend(found)

    if pooled:
        streams = await asyncio.gather(*(_open(port, 0.0) for _ in range(concurrency)))
        opened = time.perf_counter()
        deadline = opened + seconds
        tasks = [_connection(s, requests, deadline, done, errors, counter) for s in streams]
        await asyncio.gather(sample(opened + seconds / 2), *tasks)
    else:
        started = time.perf_counter()
        opened = started + (concurrency - 1) * STAGGER_S
        deadline = opened + seconds

        async def staggered(i: int) -> None:
            stream = await _open(port, i * STAGGER_S)
            await _connection(stream, requests, deadline, done, errors, counter)

        await asyncio.gather(
            sample(opened + seconds / 2), *(staggered(i) for i in range(concurrency))
        )
    window = [latency for finished, latency in done if finished >= opened]
    return window, errors, time.perf_counter() - opened, spread


def measure(
    server: Server, requests: list[bytes], concurrency: int, seconds: float, pooled: bool = True
) -> dict:
    warm = min(1.0, seconds)
    asyncio.run(_load(None, server.port, requests[:50], concurrency, warm, pooled))
    latencies, errors, elapsed, spread = asyncio.run(
        _load(server, server.port, requests, concurrency, seconds, pooled)
    )
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "per_worker": "+".join(str(n) for n in spread) or "?",
    }


# -- the sessions both servers score ---------------------------------------------------------
def sample_sessions(settings, n: int, seed: int = 11):
    """Real tutors and students, first sessions 1-7 days ahead, with the model input the
    shared feature code computes for them as of now (what mlflow serve is given)."""
    import pandas as pd

    from fsp.db import connection
    from fsp.features import build_model_input, load_history, read_frame

    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    with connection(settings) as conn:
        tutors = read_frame(conn, "SELECT tutor_id FROM platform.tutors")["tutor_id"]
        students = read_frame(
            conn, "SELECT student_id, birth_date, timezone FROM platform.students LIMIT 5000"
        )
        history = load_history(conn, now)
        subjects = read_frame(conn, "SELECT DISTINCT subject FROM platform.sessions")["subject"]
    picked = students.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)

    sessions = pd.DataFrame(
        {
            "tutor_id": rng.choice(tutors.to_numpy(), size=n),
            "subject": rng.choice(subjects.to_numpy(), size=n),
            "scheduled_start": [
                (now + timedelta(hours=int(h), minutes=15 * int(q))).replace(microsecond=0)
                for h, q in zip(rng.integers(24, 168, n), rng.integers(0, 4, n), strict=True)
            ],
            "student_id": picked["student_id"],
            "timezone": picked["timezone"],
            "birth_date": picked["birth_date"],
        }
    )
    X = build_model_input(history, sessions, [now] * n)
    return sessions, X


def bento_payloads(sessions) -> list[dict]:
    return [
        {
            "tutor_id": r.tutor_id,
            "subject": r.subject,
            "scheduled_start": r.scheduled_start.isoformat(),
            "student_id": r.student_id,
        }
        for r in sessions.itertuples()
    ]


def mlflow_payload(X) -> dict:
    return {"dataframe_split": json.loads(X.to_json(orient="split", index=False))}


def table(rows: list[tuple]) -> str:
    header = (
        "server", "load", "connections", "per worker", "requests", "errors", "req/s",
        "rows/s", "p50 ms", "p99 ms",
    )  # fmt: skip
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for name, load, opened, m, rows_per_request in rows:
        lines.append(
            " | ".join(
                [
                    name,
                    load,
                    opened,
                    m["per_worker"],
                    str(m["requests"]),
                    str(m["errors"]),
                    f"{m['rps']:.0f}",
                    f"{m['rps'] * rows_per_request:.0f}",
                    f"{m['p50_ms']:.2f}",
                    f"{m['p99_ms']:.2f}",
                ]
            )
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per load level")
    parser.add_argument("--no-package", action="store_true", help="serve the latest Bento")
    parser.add_argument("--bento", help="serve this Bento (a tag in the store) as it is")
    args = parser.parse_args()

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from fsp.constants import CHAMPION_ALIAS
    from fsp.model_store import alias_version, make_client
    from fsp.settings import get_settings
    from service.packaging import (
        _bentoml_cli,
        bentoml_home,
        latest_bento,
        package_champion,
        serving_env,
    )

    settings = get_settings()
    home = bentoml_home(settings)
    if args.bento:
        built = {"bento_tag": args.bento}
    elif args.no_package:
        built = {"bento_tag": latest_bento(home)}
    else:
        built = package_champion(settings)
    client = make_client(settings)
    version = alias_version(client, settings.model_name, CHAMPION_ALIAS)
    assert version is not None
    print(f"model {settings.model_name} version {version.version}; Bento {built['bento_tag']}")
    for key in ("build_seconds", "import_seconds", "bento_size_bytes", "model_size_bytes"):
        if key in built:
            print(f"  {key}: {built[key]}")

    sessions, X = sample_sessions(settings, BATCH_ROWS * BATCH_BODIES)
    bento_bodies = [json.dumps(p).encode() for p in bento_payloads(sessions)]
    single_bento = [request_bytes("/predict", b) for b in bento_bodies]
    single_mlflow = [
        request_bytes("/invocations", json.dumps(mlflow_payload(X.iloc[[i]])).encode())
        for i in range(len(X))
    ]
    batch_bento = [
        request_bytes("/predict_batch", b"[" + b",".join(bento_bodies[i : i + BATCH_ROWS]) + b"]")
        for i in range(0, len(bento_bodies), BATCH_ROWS)
    ]
    batch_mlflow = [
        request_bytes(
            "/invocations", json.dumps(mlflow_payload(X.iloc[i : i + BATCH_ROWS])).encode()
        )
        for i in range(0, len(X), BATCH_ROWS)
    ]

    env = serving_env(settings, home)
    bento_env = {**env, "FSP_API_KEY": API_KEY}
    bento_port, mlflow_port = free_port(), free_port()
    servers: list[Server] = []
    results = []
    try:
        bento = start(
            "bento",
            [
                _bentoml_cli(),
                "serve",
                built["bento_tag"],
                "--port",
                str(bento_port),
                "--host",
                "127.0.0.1",
            ],
            bento_env,
            bento_port,
            "/readyz",
        )
        servers.append(bento)
        mlflow_env = dict(env)
        mlflow_env.pop("FSP_API_KEY", None)
        mlflow_env["MLFLOW_TRACKING_URI"] = settings.resolved_mlflow_uri
        # mlflow starts `uvicorn` through the shell: it must find this environment's
        mlflow_env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        mlflow_server = start(
            "mlflow",
            [
                str(Path(sys.executable).parent / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{settings.model_name}/{version.version}",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(mlflow_port),
                "-w",
                "2",
            ],
            mlflow_env,
            mlflow_port,
            "/ping",
        )
        servers.append(mlflow_server)
        print(
            f"ready: Bento {bento.ready_seconds:.2f} s, mlflow {mlflow_server.ready_seconds:.2f} s"
        )
        for c in CONCURRENCY:
            for server, reqs in ((bento, single_bento), (mlflow_server, single_mlflow)):
                for pooled in (True, False) if c in POOL_COMPARED else (True,):
                    m = measure(server, reqs, c, args.seconds, pooled)
                    opened = "pooled" if pooled else "staggered"
                    results.append((server.name, f"1 session, c={c}", opened, m, 1))
                    print(table([results[-1]]).splitlines()[-1], flush=True)
        for server, reqs in ((bento, batch_bento), (mlflow_server, batch_mlflow)):
            m = measure(server, reqs, BATCH_CONCURRENCY, args.seconds)
            load = f"{BATCH_ROWS} rows, c={BATCH_CONCURRENCY}"
            results.append((server.name, load, "pooled", m, BATCH_ROWS))
            print(table([results[-1]]).splitlines()[-1], flush=True)
    finally:
        for server in servers:
            server.stop()
    print()
    print(table(results))
    by = {(name, load, opened): m for name, load, opened, m, _ in results}
    for c in CONCURRENCY:
        bento_rps = by[("bento", f"1 session, c={c}", "pooled")]["rps"]
        mlflow_rps = by[("mlflow", f"1 session, c={c}", "pooled")]["rps"]
        print(f"Bento/mlflow throughput at c={c} (pooled): {bento_rps / mlflow_rps:.1f}x")
    for name in ("bento", "mlflow"):
        for c in POOL_COMPARED:
            pooled = by[(name, f"1 session, c={c}", "pooled")]["rps"]
            staggered = by[(name, f"1 session, c={c}", "staggered")]["rps"]
            print(
                f"{name} pooled/staggered throughput at c={c}: {pooled:.0f} / {staggered:.0f}"
                f" req/s = {pooled / staggered:.0%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
