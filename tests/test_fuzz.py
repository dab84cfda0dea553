"""Fuzzing: schemathesis against BOTH OpenAPI documents of a real served Bento.

- The Bento's own document, `/docs.json` (every endpoint, the mounted read app's too),
- the mounted FastAPI app's document, `/api/first-session/openapi.json`.

The Bento is built by `fsp package` from the trained world and served by `fsp serve`
with an API key (every case sends it) on a database of its own, seeded as the demo
platform plus scheduled first sessions in the coming days. Hooks swap real ids into
about half of the generated cases (tutors, students, subjects, session ids with their
tutor, subject and start, start times within the window the API accepts, `now` values
within the data), so cases reach the scoring, storing and reading code rather than
stopping at "unknown tutor". Examples, coverage (boundary values, missing fields) and
fuzzing phases, positive and negative cases.

Every answer: no 5xx, conforming to its document (status code, content type, body
schema), and every 4xx a JSON object whose "error" says what was wrong. At least
1,000 cases over every operation. `make fuzz` runs only this file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from conftest import DEMO_NOW, create_database, drop_database, seed_demo
from service_fixtures import fsp_serve

from fsp.settings import get_settings

pytestmark = pytest.mark.services

API_KEY = "fuzz-key-3c9e71b2d4"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
READ_PREFIX = "/api/first-session"
DOCUMENTS = {"bento": "/docs.json", "read app": f"{READ_PREFIX}/openapi.json"}
READ_PATHS = (
    "/predict-upcoming",
    "/history/{tutor_id}",
    "/analytics/model-performance",
    "/analytics/summary",
)
"""The read endpoints, which take a `now` query parameter."""
MAX_EXAMPLES = 150
"""Fuzzing examples per operation (the coverage and examples phases add their own)."""
RUN_TIMEOUT_S = 300
"""Bound on one document's schemathesis run."""
MIN_CASES = 1000
PLATFORM_SESSIONS = 40
"""Scheduled first sessions added to the fuzz database, 1-30 days ahead."""
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "refusal_says_why",  # defined in FUZZ_HOOKS
]


# -- the served Bento -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_db(server_url: str) -> Iterator[dict]:
    """A database of its own, seeded like the demo platform, plus scheduled first
    sessions in the coming days (what stored predictions must belong to); yields its
    URL and the real ids the hooks use."""
    url = create_database(server_url)
    seed_demo(url)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with psycopg.connect(url) as conn:
        tutors = [r[0] for r in conn.execute("SELECT tutor_id FROM platform.tutors ORDER BY 1")]
        students = [
            r[0] for r in conn.execute("SELECT student_id FROM platform.students ORDER BY 1")
        ]
        subjects = [
            r[0] for r in conn.execute("SELECT DISTINCT subject FROM platform.sessions ORDER BY 1")
        ]
        sessions = []
        for i in range(PLATFORM_SESSIONS):
            start = now + timedelta(days=1 + i % 30, hours=i % 11)
            row = (
                f"FUZZ-{i:03d}",
                tutors[(7 * i) % len(tutors)],
                students[(13 * i) % len(students)],
                subjects[i % len(subjects)],
                start,
            )
            conn.execute(
                "INSERT INTO platform.sessions (session_id, tutor_id, student_id, subject,"
                " scheduled_start, duration_minutes, status, is_first_session, created_at)"
                " VALUES (%s, %s, %s, %s, %s, 60, 'scheduled', true, now())",
                row,
            )
            sessions.append(
                {
                    "session_id": row[0],
                    "tutor_id": row[1],
                    "student_id": row[2],
                    "subject": row[3],
                    "scheduled_start": start.isoformat(),
                }
            )
    yield {
        "url": url,
        "tutors": tutors,
        "students": students[:500],
        "subjects": subjects,
        "sessions": sessions,
        "now": now,
    }
    drop_database(server_url, url)


@pytest.fixture(scope="module")
def fuzz_served(
    trained_world: dict, fuzz_db: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """`fsp package` of the trained world's champion into a BentoML home of its own, and
    `fsp serve` of it on a free loopback port with FSP_API_KEY set."""
    from service.packaging import package_champion

    home = tmp_path_factory.mktemp("fuzz-bentoml")
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "DATABASE_URL": trained_world["database_url"],
        "FSP_STATE_DIR": str(trained_world["state_dir"]),
        "MLFLOW_TRACKING_URI": f"sqlite:///{trained_world['state_dir'] / 'mlflow.db'}",
    }
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    get_settings.cache_clear()
    try:
        package_champion(get_settings())
    finally:
        mp.undo()
        get_settings.cache_clear()

    env.update(DATABASE_URL=fuzz_db["url"], FSP_API_KEY=API_KEY)
    with fsp_serve(home, **env) as server:
        yield {"base_url": server.base_url, "log": server.log, **fuzz_db}


# -- schemathesis: its command line, with hooks that put real ids in ---------------------------
FUZZ_HOOKS = '''
"""schemathesis hooks of tests/test_fuzz.py (written to a temporary folder, loaded through
SCHEMATHESIS_HOOKS): real ids in about half the generated cases, a log line per call,
and the check that every 4xx says what was wrong."""

import json
import os

import schemathesis
from hypothesis import strategies as st

with open(os.environ["FSP_FUZZ_REAL_IDS"]) as f:
    REAL = json.load(f)
LOG = os.environ["FSP_FUZZ_LOG"]
READ_PATHS = tuple(REAL["read_paths"])

TUTORS = st.sampled_from(REAL["tutors"])
STUDENTS = st.sampled_from(REAL["students"])
SUBJECTS = st.sampled_from(REAL["subjects"])
SESSIONS = st.sampled_from(REAL["sessions"])
STARTS = st.sampled_from(REAL["starts"])
MOMENTS = st.sampled_from(REAL["moments"])


def _context(body):
    real = st.fixed_dictionaries(
        {"subject": SUBJECTS, "scheduled_start": STARTS}, optional={"student_id": STUDENTS}
    )
    return real.map(lambda r: {**body, **r})


def _session(body):
    """A session body with a real tutor, subject, start (and student), or a session the
    platform holds, with its tutor, subject, student and start (stored when scored)."""
    if not isinstance(body, dict):
        return st.just(body)
    independent = _context(body).flatmap(lambda b: TUTORS.map(lambda t: {**b, "tutor_id": t}))
    held = SESSIONS.map(lambda s: {**body, **s})
    return st.one_of(independent, held)


def _rank(body):
    if not isinstance(body, dict):
        return st.just(body)
    tutors = st.lists(TUTORS, min_size=1, max_size=6, unique=True)
    return _context(body).flatmap(lambda b: tutors.map(lambda t: {**b, "tutor_ids": t}))


@schemathesis.hook
def flatmap_body(context, body):
    path = context.operation.path
    if path == "/predict":
        real = _session(body)
    elif path == "/predict_batch" and isinstance(body, list) and body:
        head = st.tuples(*(_session(b) for b in body[:20]))
        real = head.map(lambda h: [*h, *body[20:]])
    elif path == "/rank_tutors":
        real = _rank(body)
    else:
        return st.just(body)
    return st.one_of(st.just(body), real)


@schemathesis.hook
def flatmap_query(context, query):
    if not isinstance(query, dict) or not context.operation.path.endswith(READ_PATHS):
        return st.just(query)
    return st.one_of(st.just(query), MOMENTS.map(lambda m: {**query, "now": m}))


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    if not isinstance(path_parameters, dict) or "tutor_id" not in path_parameters:
        return st.just(path_parameters)
    real = TUTORS.map(lambda t: {**path_parameters, "tutor_id": t})
    return st.one_of(st.just(path_parameters), real)


def _message(response):
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    message = body.get("error") if isinstance(body, dict) else None
    return message if isinstance(message, str) and message.strip() else None


@schemathesis.hook
def after_call(context, case, response):
    line = {
        "operation": f"{case.method.upper()} {case.operation.path}",
        "status": response.status_code,
        "message": _message(response) is not None,
    }
    with open(LOG, "a") as f:
        f.write(json.dumps(line) + "\\n")


@schemathesis.check
def refusal_says_why(ctx, response, case):
    """Every 4xx answers a JSON object whose "error" says what was wrong."""
    if 400 <= response.status_code < 500 and _message(response) is None:
        raise AssertionError(f"{response.status_code} without a JSON 'error' message")
    return None
'''

SEED = 20261103
"""schemathesis's seed: the same cases on every run (a failure reproduces)."""


def _real_ids(served: dict) -> dict:
    now = served["now"]
    zones = ("UTC", "America/New_York", "Asia/Kolkata", "Pacific/Auckland")
    return {
        "tutors": served["tutors"],
        "students": served["students"],
        "subjects": served["subjects"],
        "sessions": served["sessions"],
        "starts": [
            (now + timedelta(hours=h)).astimezone(ZoneInfo(z)).isoformat()
            for h in (2, 30, 24 * 7, 24 * 90)
            for z in zones
        ],
        "moments": [
            now.isoformat(),
            (now - timedelta(days=20)).isoformat(),
            DEMO_NOW.isoformat(),
            (DEMO_NOW - timedelta(days=60)).astimezone(ZoneInfo("Asia/Tokyo")).isoformat(),
        ],
        "read_paths": list(READ_PATHS),
    }


def _run_schemathesis(served: dict, document: str, folder: Path) -> tuple[int, str, list[dict]]:
    """`st run` of one document against the served Bento; its exit code, its output and
    the log line of every call made."""
    log = folder / f"calls-{document.replace(' ', '-')}.jsonl"
    env = dict(os.environ)
    env.update(
        SCHEMATHESIS_HOOKS="fsp_fuzz_hooks",
        PYTHONPATH=os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]),
        FSP_FUZZ_REAL_IDS=str(folder / "real_ids.json"),
        FSP_FUZZ_LOG=str(log),
    )
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        served["base_url"] + DOCUMENTS[document],
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--no-shrink",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--continue-on-failure",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    done = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done.returncode, done.stdout + done.stderr, calls


def test_fuzz_both_documents(fuzz_served: dict, tmp_path: Path) -> None:
    """Both documents fuzzed: every operation exercised, >= MIN_CASES cases in all, no
    5xx, every check passing (schemathesis exits 0), every 4xx with a JSON message."""
    (tmp_path / "fsp_fuzz_hooks.py").write_text(FUZZ_HOOKS)
    (tmp_path / "real_ids.json").write_text(json.dumps(_real_ids(fuzz_served)))
    problems: list[str] = []
    total = 0
    for document in DOCUMENTS:
        code, output, calls = _run_schemathesis(fuzz_served, document, tmp_path)
        spec = httpx.get(fuzz_served["base_url"] + DOCUMENTS[document], headers=AUTH).json()
        operations = sorted(
            f"{method.upper()} {path}"
            for path, methods in spec["paths"].items()
            for method in methods
            if method in ("get", "post", "put", "patch", "delete")
        )
        per_operation = Counter(call["operation"] for call in calls)
        statuses = Counter(call["status"] for call in calls)
        server_errors = sum(n for status, n in statuses.items() if status >= 500)
        silent = sum(1 for c in calls if 400 <= c["status"] < 500 and not c["message"])
        total += len(calls)
        print(
            f"\nschemathesis, {document} document ({DOCUMENTS[document]}): {len(calls)} cases,"
            f" {server_errors} 5xx, {silent} 4xx without a message; statuses "
            + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
        )
        for operation in operations:
            print(f"  {operation}: {per_operation[operation]} cases")
        summary = [line for line in output.splitlines() if "generated" in line]
        print("  " + (summary[-1].strip() if summary else "(no summary line)"))
        if code != 0:
            problems.append(f"{document}: schemathesis exited {code}:\n{output[-6000:]}")
        if server_errors or silent:
            problems.append(f"{document}: {server_errors} 5xx, {silent} 4xx without a message")
        missing = [op for op in operations if per_operation[op] == 0]
        if missing:
            problems.append(f"{document}: operations never exercised: {missing}")
    with psycopg.connect(fuzz_served["url"]) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM fsp.first_session_predictions WHERE session_id LIKE 'FUZZ-%'"
        ).fetchone()[0]
    print(f"schemathesis: {total} cases in all; predictions stored for {stored} platform sessions")
    assert not problems, "\n".join(problems)
    assert total >= MIN_CASES
    assert stored > 0  # the real ids reached the storing path


def test_refusals_the_fuzzer_found_answer_json(fuzz_served: dict) -> None:
    """What the first fuzzing run found: a method a route does not take answered 405 in
    plain text, and the read endpoints' 422 was FastAPI's {"detail": ...} without a
    message. Both now say what was wrong in {"error": ...}."""
    base = fuzz_served["base_url"]
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
        for method, path in (
            ("TRACE", "/predict"),
            ("PUT", "/livez"),
            ("DELETE", f"{READ_PREFIX}/analytics/summary"),
        ):
            response = client.request(method, path)
            assert response.status_code == 405, (method, path, response.text)
            assert response.json() == {"error": "Method Not Allowed"}
            assert response.headers["allow"]
        response = client.get(f"{READ_PREFIX}/analytics/summary", params={"now": "AAA"})
        assert response.status_code == 422
        body = response.json()
        assert body["error"].startswith("1 validation error: query.now: must be an ISO 8601")
        assert body["detail"][0]["loc"] == ["query", "now"]
        response = client.get(f"{READ_PREFIX}/analytics/summary", params={"days": 0, "now": "x"})
        assert response.json()["error"].startswith("2 validation errors: query.days:")
