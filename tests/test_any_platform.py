"""A platform that does not look like our default demo world, end to end: its own
subjects (spaces, capitals, non-ASCII), zones with half-hour offsets and southern
summer time, identifiers with spaces, quotes and accents. The system trains on it,
learns its vocabulary, scores it, serves it over HTTP and emails about it; a
subject with a real effect in that world moves the risk the right way; bad
platform rows are skipped with a named reason while the rest are scored."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from conftest import DEMO_NOW, configure_env, create_database, drop_database
from service_fixtures import fsp_serve

from fsp.settings import get_settings

pytestmark = pytest.mark.services
WEEK = 24 * 7


@pytest.fixture(scope="module")
def intl_world(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The international demo platform in a database of its own, with a champion."""
    from flows.train import train_flow
    from fsp import demo_data
    from fsp.db import connect, upgrade

    url = create_database(server_url)
    state = tmp_path_factory.mktemp("intl-state")
    spec = demo_data.DemoSpec(300, 150, 11, DEMO_NOW, platform="international")
    with connect(url) as conn:
        upgrade(conn)
        demo_data.write(conn, demo_data.generate(spec))
    mp = pytest.MonkeyPatch()
    configure_env(mp, url, state)
    try:
        summary = train_flow(as_of=DEMO_NOW.isoformat())
        yield {"database_url": url, "state_dir": state, "train": summary, "mp": mp}
    finally:
        mp.undo()
        get_settings.cache_clear()
        drop_database(server_url, url)


@pytest.fixture(scope="module")
def champion(intl_world: dict):
    from fsp.model_store import make_client
    from fsp.scoring import load_scoring_model

    settings = get_settings()
    return load_scoring_model(make_client(settings), settings.model_name)


def test_vocabulary_is_learned_from_the_platform_and_logged(intl_world: dict, champion) -> None:
    from fsp.demo_data import INTERNATIONAL_SUBJECT_MIX as INTERNATIONAL_SUBJECTS
    from fsp.model_store import make_client

    learned = set(champion.encoder.subjects_)
    assert learned and learned <= set(INTERNATIONAL_SUBJECTS)
    assert {"AP Physics", "Chess", "IELTS English"} <= learned
    client = make_client(get_settings())
    version = client.get_model_version(get_settings().model_name, champion.version)
    assert set(json.loads(version.tags["vocabulary.subject"])) == learned
    folder = client.download_artifacts(version.run_id, "vocabulary.json")
    logged = json.loads(Path(folder).read_text())["subject"]
    assert set(logged["levels"]) == learned and logged["min_count"] >= 1


def test_a_subject_with_a_real_effect_moves_the_risk_the_right_way(
    intl_world: dict, champion
) -> None:
    """In this world 'AP Physics' raises the odds of a poor session and 'Chess' lowers
    them (the generator's effects): the trained model agrees, session by session."""
    from fsp.demo_data import INTERNATIONAL_SUBJECT_EFFECTS as effects
    from training.dataset import build_training_set

    assert effects["AP Physics"] > 0 > effects["Chess"]
    with psycopg.connect(intl_world["database_url"]) as conn:
        X = build_training_set(conn, DEMO_NOW).X.tail(400)
    hard = champion.probabilities(X.assign(subject="AP Physics"))
    easy = champion.probabilities(X.assign(subject="Chess"))
    assert np.mean(hard > easy) >= 0.9 and hard.mean() > easy.mean() + 0.02


def test_scoring_and_emails_on_the_platform_skip_bad_rows(intl_world: dict) -> None:
    from flows.alerts import alerts_flow
    from flows.score import score_flow

    url = intl_world["database_url"]
    bad = _insert_bad_rows(url)
    summary = score_flow(now=DEMO_NOW.isoformat(), lookahead_hours=WEEK)
    assert summary["sessions_scored"] > 50
    assert summary["sessions_skipped"] == {"empty subject": 1, "unknown time zone": 1}
    with psycopg.connect(url) as conn:
        stored = {
            r[0] for r in conn.execute("SELECT session_id FROM fsp.first_session_predictions")
        }
        odd_tutors = conn.execute(
            "SELECT count(*) FROM fsp.first_session_predictions WHERE tutor_id ~ '[^ -~]'"
        ).fetchone()[0]
    assert not stored & bad and odd_tutors > 0  # non-ASCII ids stored as they are
    sent = alerts_flow(now=DEMO_NOW.isoformat())
    assert sent["sent"] > 0, sent
    outbox = get_settings().outbox_dir
    texts = [
        message_from_bytes(p.read_bytes(), policy=default_policy).get_body(("plain",)).get_content()
        for p in outbox.glob("*.eml")
    ]
    subjects = {s for s in _platform_subjects(url) if any(s in t for t in texts)}
    assert subjects, "the emails name the subjects as the platform spells them"


def _platform_subjects(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT DISTINCT subject FROM platform.sessions")}


def _insert_bad_rows(url: str) -> set[str]:
    """Two scheduled first sessions the model cannot score: an empty subject, and a
    student whose time zone no table knows (both allowed by the platform's schema)."""
    start = DEMO_NOW + timedelta(hours=30)
    with psycopg.connect(url) as conn:
        tutor, student = conn.execute(
            "SELECT tutor_id, student_id FROM platform.sessions LIMIT 1"
        ).fetchone()
        conn.execute(
            "INSERT INTO platform.students VALUES ('stu mars', 'Mars Rover', '2010-01-01',"
            " 'Mars/Olympus_Mons')"
        )
        for sid, who, subject in (("bad-1", student, "  "), ("bad-2", "stu mars", "Chess")):
            conn.execute(
                "INSERT INTO platform.sessions VALUES (%s, %s, %s, %s, %s, 60, 'scheduled',"
                " true, %s)",
                (sid, tutor, who, subject, start, DEMO_NOW - timedelta(days=1)),
            )
    return {"bad-1", "bad-2"}


@pytest.fixture(scope="module")
def intl_served(intl_world: dict, tmp_path_factory) -> Iterator[str]:
    """`fsp package` + `fsp serve` of the platform's champion on a loopback port."""
    from service.packaging import package_champion

    home = tmp_path_factory.mktemp("intl-bentoml")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        package_champion(get_settings())
    finally:
        os.environ.pop("BENTOML_HOME", None)
    with fsp_serve(home, BENTOML_HOME=str(home)) as server:
        yield server.base_url


def test_the_bento_serves_the_platform_as_it_spells_itself(intl_served: str, intl_world) -> None:
    with psycopg.connect(intl_world["database_url"]) as conn:
        tutor = conn.execute(
            "SELECT tutor_id FROM platform.tutors WHERE tutor_id ~ '[^ -~]' LIMIT 1"
        ).fetchone()[0]
    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    body = {
        "tutor_id": tutor,
        "subject": "AP Physics",
        "scheduled_start": start.isoformat(),
        "student_age": 16,
        "timezone": "Asia/Kathmandu",
    }
    with httpx.Client(base_url=intl_served, timeout=30) as client:
        known = client.post("/predict", json=body)
        unseen = client.post("/predict", json={**body, "subject": "Robotics"})
        batch = client.post("/predict_batch", json=[body, {**body, "subject": "Robotics"}])
    assert known.status_code == 200, known.text
    assert known.json()["notes"] == [] and known.json()["tutor_id"] == tutor
    assert unseen.status_code == 200 and "'Robotics' was not seen" in unseen.json()["notes"][0]
    assert [a["notes"] for a in batch.json()] == [[], unseen.json()["notes"]]
