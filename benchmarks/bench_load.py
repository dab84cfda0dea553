"""Load test of the served Bento: POST /predict at c=32 for 60 s, the connections
opened in the same instant (as a client's pool opens them), every request a
different session (tutors, subjects, start times, students, by student record or by
age and time zone, in several UTC offsets), with an API key.

    .venv/bin/python benchmarks/bench_load.py [--seconds S] [--concurrency C]
                                              [--no-package | --bento TAG]

Uses the configured settings (embedded defaults unless DATABASE_URL etc. are set),
packages the champion (unless told otherwise) and serves it with `bentoml serve` on
loopback, FSP_API_KEY set to a key made up for the run. Prints the requests, the
errors (any answer but 200, or a broken connection: there must be none), p50/p99
latency, the connections each worker holds, and the resident memory (RSS) of each
worker process (the processes under `bentoml serve` that listen on the port),
sampled every second: the mean of the last 10 s against the first 10 s (within
10 %). Exits 1 when there was an error or a worker's RSS drifted more than that. The
load is bounded in time and count, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_serving as serving

CONCURRENCY = 32
SECONDS = 60.0
BODIES = 20_000
"""Distinct /predict bodies cycled through (each a different session)."""
MAX_REQUESTS = 2_000_000
"""Upper bound on the requests sent, whatever the time."""
WARM_UP_S = 2.0
"""A short load before the measured one (first imports and caches of each worker)."""
RSS_WINDOW_S = 10.0
RSS_DRIFT_LIMIT = 0.10
"""A worker's mean RSS in the last RSS_WINDOW_S may differ from its first by this much."""
OFFSETS = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "America/Los_Angeles")


def predict_bodies(settings, n: int, seed: int = 17) -> list[bytes]:
    """n /predict bodies: real tutors and students, subjects the platform teaches,
    starts 1-7 days ahead written in one of several UTC offsets; every other one names
    the student by record, the rest by age and time zone."""
    sessions, _ = serving.sample_sessions(settings, n, seed=seed)
    rng = np.random.default_rng(seed)
    bodies = []
    for i, r in enumerate(sessions.itertuples()):
        start = r.scheduled_start.astimezone(ZoneInfo(OFFSETS[i % len(OFFSETS)]))
        body = {"tutor_id": r.tutor_id, "subject": r.subject, "scheduled_start": start.isoformat()}
        if i % 2 == 0:
            body["student_id"] = r.student_id
        else:
            body["student_age"] = int(rng.integers(6, 70))
            body["timezone"] = r.timezone
        bodies.append(json.dumps(body).encode())
    return bodies


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    rss: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    per_worker: list[int] = field(default_factory=list)
    sent: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _client(port: int, requests: list[bytes], deadline: float, run: Run, stream) -> None:
    """One keep-alive connection: the next request as soon as the last is answered; a
    broken connection counts as an error and is opened again."""
    reader, writer = stream
    try:
        while time.perf_counter() < deadline and run.sent < MAX_REQUESTS:
            payload = requests[run.sent % len(requests)]
            run.sent += 1
            sent = time.perf_counter()
            try:
                writer.write(payload)
                status = await serving._read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                run.error(type(exc).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            run.latencies.append(time.perf_counter() - sent)
            if status != 200:
                run.error(str(status))
    finally:
        writer.close()


def _rss(pids: list[int]) -> dict[int, int]:
    import psutil

    found = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found[pid] = psutil.Process(pid).memory_info().rss
    return found


async def _load(server, requests, concurrency, seconds, pids: list[int] | None) -> Run:
    """The load, all connections opened at once; with `pids`, their RSS every second
    and the connections each holds halfway through."""
    run = Run()
    loop = asyncio.get_running_loop()
    streams = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", server.port) for _ in range(concurrency))
    )
    started = time.perf_counter()
    deadline = started + seconds

    async def sample() -> None:
        if not pids:
            return
        tick = 0
        while True:
            at = started + tick
            if at > deadline:
                return
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            for pid, rss in (await loop.run_in_executor(None, _rss, pids)).items():
                run.rss.setdefault(pid, []).append((time.perf_counter() - started, rss))
            if tick == int(seconds / 2):
                run.per_worker = await loop.run_in_executor(
                    None, serving.connections_per_worker, server.process.pid, server.port
                )
            tick += 1

    await asyncio.gather(
        sample(), *(_client(server.port, requests, deadline, run, s) for s in streams)
    )
    return run


def _worker_pids(server, want: int, timeout: float = 60.0) -> list[int]:
    """The worker processes (listening on the port) once `want` of them are up."""
    deadline = time.monotonic() + timeout
    pids: list[int] = []
    while time.monotonic() < deadline:
        pids = serving.worker_pids(server.process.pid, server.port)
        if len(pids) >= want:
            break
        time.sleep(0.5)
    return pids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--no-package", action="store_true", help="serve the latest Bento")
    parser.add_argument("--bento", help="serve this Bento (a tag in the store) as it is")
    args = parser.parse_args()
    seconds = args.seconds

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from fsp.settings import get_settings
    from service.config import WORKERS
    from service.packaging import (
        bentoml_home,
        latest_bento,
        package_champion,
        serve_command,
        serving_env,
    )

    settings = get_settings()
    home = bentoml_home(settings)
    if args.bento:
        tag = args.bento
    elif args.no_package:
        tag = latest_bento(home)
    else:
        tag = package_champion(settings)["bento_tag"]
    bodies = predict_bodies(settings, BODIES)
    requests = [serving.request_bytes("/predict", b) for b in bodies]
    print(f"Bento {tag}; {len(requests)} distinct /predict bodies")

    env = {**serving_env(settings, home), "FSP_API_KEY": serving.API_KEY}
    port = serving.free_port()
    server = serving.start("load", serve_command(tag, port), env, port, "/readyz")
    try:
        pids = _worker_pids(server, WORKERS)
        print(f"ready in {server.ready_seconds:.1f} s; worker pids {pids}")
        asyncio.run(_load(server, requests, args.concurrency, WARM_UP_S, None))
        print(
            f"/predict, c={args.concurrency} (connections opened at once), {seconds:.0f} s ...",
            flush=True,
        )
        run = asyncio.run(_load(server, requests, args.concurrency, seconds, pids))
    finally:
        server.stop()

    ms = np.array(run.latencies) * 1000
    errors = sum(run.errors.values())
    print()
    print(f"requests answered   {len(ms)}  ({len(ms) / seconds:.0f} req/s)")
    print(f"errors              {errors}  {run.errors or ''}".rstrip())
    for q in (50, 99, 99.9):
        print(f"p{q:<4} latency ms    {np.percentile(ms, q):.2f}")
    print(f"max latency ms      {ms.max():.2f}")
    print(f"connections/worker  {'+'.join(map(str, run.per_worker))}")
    print()
    print("worker | samples | RSS first 10 s MB | RSS last 10 s MB | drift")
    print("--- | --- | --- | --- | ---")
    worst = 0.0
    for pid, samples in sorted(run.rss.items()):
        first = [rss for t, rss in samples if t < RSS_WINDOW_S]
        last = [rss for t, rss in samples if t >= seconds - RSS_WINDOW_S]
        drift = float(np.mean(last) / np.mean(first) - 1)
        worst = max(worst, abs(drift))
        print(
            f"{pid} | {len(samples)} | {np.mean(first) / 2**20:.1f} | {np.mean(last) / 2**20:.1f}"
            f" | {drift:+.1%}"
        )
    print()
    marks = range(0, int(seconds) + 1, 10)
    print("RSS MB at  " + " ".join(f"{t:>6}s" for t in marks))
    for pid, samples in sorted(run.rss.items()):
        at = [min(samples, key=lambda s, t=t: abs(s[0] - t))[1] / 2**20 for t in marks]
        print(f"{pid:<10} " + " ".join(f"{v:7.1f}" for v in at))
    ok = errors == 0 and worst <= RSS_DRIFT_LIMIT and len(run.rss) >= WORKERS
    print()
    print(
        f"{'PASS' if ok else 'FAIL'}: {errors} errors, largest RSS drift {worst:.1%}"
        f" (limit {RSS_DRIFT_LIMIT:.0%}), {len(run.rss)} workers sampled"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
