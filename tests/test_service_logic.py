"""In-process tests of the service logic: the fast path against the logged model on the
holdout, the feature snapshot against the shared feature code, the request rules,
and the expected failures (no champion, no Bento, database down)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
import pytest
from conftest import DEMO_NOW
from pydantic import ValidationError

from fsp.demo_data import TIMEZONES
from fsp.errors import DatabaseUnavailable, InvalidInput, NoChampion
from fsp.features import (
    MODEL_INPUT_COLUMNS,
    age_on,
    build_model_input,
    load_history,
    local_time_features,
)
from fsp.settings import get_settings
from service.config import MAX_BATCH_SIZE
from service.fastpath import FastLinearScorer, LinearParams, ModelRows, scored
from service.logic import RiskService
from service.lookup import SnapshotKeeper
from service.model_input import local_contexts
from service.schemas import RankRequest, SessionRequest
from service.served_model import ServedModel
from service.worker import Worker, assemble
from training.dataset import build_training_set

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def champion(trained_world: dict):
    """The trained world's champion as ScoringModel, and its holdout model input."""
    mp = pytest.MonkeyPatch()
    from conftest import configure_env

    configure_env(mp, trained_world["database_url"], trained_world["state_dir"])
    try:
        from fsp.model_store import make_client
        from fsp.scoring import load_scoring_model
        from training.dataset import build_training_set
        from training.model import time_split

        settings = get_settings()
        model = load_scoring_model(make_client(settings), settings.model_name)
        with psycopg.connect(trained_world["database_url"]) as conn:
            ts = build_training_set(conn, DEMO_NOW)
        _, holdout = time_split(ts.starts, ts.cutoff, settings.holdout_days)
        yield model, ts.X[holdout].reset_index(drop=True)
    finally:
        mp.undo()
        get_settings.cache_clear()


def test_fast_path_equals_the_logged_model_on_every_holdout_row(champion) -> None:
    model, X = champion
    assert model.is_linear and len(X) >= 50
    fast = FastLinearScorer(
        LinearParams.from_json(LinearParams.from_scoring_model(model).to_json())
    )
    rows = ModelRows.from_frame(X)
    p, contributions = fast.score(rows)
    assert np.max(np.abs(p - model.probabilities(X))) <= 1e-9
    assert np.max(np.abs(contributions - model.contributions(X))) <= 1e-9
    assert np.max(np.abs(p - model.model.predict_proba(X)[:, 1])) <= 1e-9


def test_fast_path_equals_an_extended_linear_model(trained_world, champion) -> None:
    """A linear model on the extended features (whether or not it is the champion):
    the fast path encodes the model's own feature set, to the same 1e-9."""
    from fsp.scoring import ScoringModel
    from training.model import CANDIDATES, calibrated

    _, X = champion
    with psycopg.connect(trained_world["database_url"]) as conn:
        ts = build_training_set(conn, DEMO_NOW)
    candidate = next(c for c in CANDIDATES if c.name == "logistic_regression_binned_extended")
    model = ScoringModel(calibrated(candidate, 0).fit(ts.X, ts.y), "x", 0.5)
    params = LinearParams.from_json(LinearParams.from_scoring_model(model).to_json())
    assert params.encoding.feature_set == "extended"
    p, contributions = FastLinearScorer(params).score(ModelRows.from_frame(X))
    assert np.max(np.abs(p - model.probabilities(X))) <= 1e-9
    assert np.max(np.abs(contributions - model.contributions(X))) <= 1e-9
    used = np.abs(contributions).sum(axis=0)
    assert used[MODEL_INPUT_COLUMNS.index("poor_rate_in_subject")] > 0


def test_fast_path_reasons_equal_the_shared_scoring(champion) -> None:
    from fsp.scoring import score

    model, X = champion
    fast = FastLinearScorer(LinearParams.from_scoring_model(model))
    ours = scored(fast, ModelRows.from_frame(X), model.threshold, model.version)
    theirs = score(model, X)
    assert [o["top_risk_factors"] for o in ours] == list(theirs["top_risk_factors"])
    assert [o["risk_level"] for o in ours] == list(theirs["risk_level"])
    assert [o["should_send_alert"] for o in ours] == list(theirs["should_send_alert"])
    assert [o["risk_score"] for o in ours] == list(theirs["risk_score"])


def test_local_context_equals_the_shared_feature_code() -> None:
    rng = np.random.default_rng(5)
    zones = [
        *TIMEZONES,
        "Europe/London",
        "Asia/Kolkata",
        "UTC",
    ]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    starts = [base + timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 730, 3000)]
    # DST edges in the US and Europe, to the minute
    for edge in ("2026-03-08T06:59", "2026-03-08T07:00", "2026-11-01T05:59", "2026-11-01T06:00"):
        starts.append(datetime.fromisoformat(edge).replace(tzinfo=UTC))
    tz = [zones[i % len(zones)] for i in range(len(starts))]
    births = [date(2000 + i % 20, 1 + i % 12, 1 + i % 28) for i in range(len(starts))]
    births[-1] = date(2010, 11, 1)  # a birthday on the local date of the last start
    expected = local_time_features(starts, tz)
    expected_age = age_on(births, starts, tz)
    ours = local_contexts(
        starts, tz, [None] * len(starts), [(b.year, b.month * 100 + b.day) for b in births]
    )
    assert np.array_equal(ours[:, 0], expected["local_hour"].to_numpy())
    assert np.array_equal(ours[:, 1], expected["local_dow"].to_numpy())
    assert np.array_equal(ours[:, 2], expected_age.astype(float))


@pytest.fixture(scope="module")
def worker(trained_world: dict, champion):
    """A worker's parts on the trained world (reads only), its snapshot as of DEMO_NOW,
    serving the champion through the fast path."""
    model, _ = champion
    served = ServedModel(
        name="first-session-risk",
        mlflow_version=model.version,
        run_id=model.run_id,
        model_type="logistic_regression",
        threshold=model.threshold,
        bento_model="test:1",
        scorer=FastLinearScorer(LinearParams.from_scoring_model(model)),
    )
    worker = assemble(served, lambda: trained_world["database_url"], lambda: DEMO_NOW)
    assert worker.database.check()
    worker.keeper.refresh()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def keeper(worker: Worker) -> SnapshotKeeper:
    return worker.keeper


@pytest.fixture(scope="module")
def logic(worker: Worker) -> RiskService:
    return worker.logic


def _upcoming(url: str) -> pd.DataFrame:
    from fsp.predictions import upcoming_sessions

    with psycopg.connect(url) as conn:
        return upcoming_sessions(conn, DEMO_NOW, 72)


def _requests(sessions: pd.DataFrame) -> list[SessionRequest]:
    """The upcoming sessions as /predict requests (by student record)."""
    return [
        SessionRequest(
            tutor_id=r.tutor_id,
            subject=r.subject,
            scheduled_start=r.scheduled_start,
            student_id=r.student_id,
        )
        for r in sessions.itertuples()
    ]


def test_snapshot_rows_equal_build_model_input(trained_world: dict, keeper, logic) -> None:
    """The service's model input is the shared feature code's, as of the request time."""
    sessions = _upcoming(trained_world["database_url"])
    assert len(sessions) > 10
    requests = _requests(sessions)
    tutors = list(sessions["tutor_id"])
    ours = logic.inputs.for_contexts(requests, tutors, keeper.current()).frame()
    with psycopg.connect(trained_world["database_url"]) as conn:
        history = load_history(conn, DEMO_NOW)
    later = DEMO_NOW + timedelta(minutes=3)  # a request a little after the snapshot
    expected = build_model_input(history, sessions, [later] * len(sessions))
    pd.testing.assert_frame_equal(ours, expected, check_exact=True)


def test_predict_and_rank_agree_with_the_shared_scoring(
    trained_world: dict, logic, champion
) -> None:
    from fsp.scoring import score

    model, _ = champion
    sessions = _upcoming(trained_world["database_url"]).head(20)
    requests = _requests(sessions)
    answers = logic.predict(requests)
    with psycopg.connect(trained_world["database_url"]) as conn:
        X = build_model_input(load_history(conn, DEMO_NOW), sessions, [DEMO_NOW] * len(sessions))
    expected = score(model, X)
    assert np.allclose(
        [a.risk_probability for a in answers], expected["risk_probability"], atol=1e-9, rtol=0
    )
    assert [a.model_dump()["top_risk_factors"] for a in answers] == list(
        expected["top_risk_factors"]
    )
    assert all(a.prediction_id is None for a in answers)

    first = sessions.iloc[0]
    ranked = logic.rank(
        RankRequest(
            tutor_ids=list(dict.fromkeys(sessions["tutor_id"]))[:8],
            subject=first["subject"],
            scheduled_start=first["scheduled_start"],
            student_id=first["student_id"],
        )
    )
    risks = [c.risk_probability for c in ranked.candidates]
    assert risks == sorted(risks) and ranked.candidates[0].rank == 1


def test_unknown_tutor_and_student(logic) -> None:
    """A tutor or student the snapshot does not know is a wrong field of the request."""
    start = DEMO_NOW + timedelta(days=1)
    with pytest.raises(InvalidInput, match="unknown tutor_id 'NOPE'"):
        logic.predict(
            [
                SessionRequest(
                    tutor_id="NOPE",
                    subject="algebra",
                    scheduled_start=start,
                    student_age=10,
                    timezone="UTC",
                )
            ]
        )
    tutor = next(iter(logic.keeper.current().tutor_index))
    with pytest.raises(InvalidInput, match="student_id"):
        logic.predict(
            [
                SessionRequest(
                    tutor_id=tutor, subject="algebra", scheduled_start=start, student_id="NOPE"
                )
            ]
        )


def test_database_down_is_not_ready_and_refuses(worker: Worker) -> None:
    down = assemble(
        worker.logic.model, lambda: "postgresql://nobody@127.0.0.1:9/none", lambda: DEMO_NOW
    )
    try:
        down.keeper.tick()
        keeper = down.keeper
        assert not keeper.ready and "database unavailable" in (keeper.not_ready_reason or "")
        with pytest.raises(DatabaseUnavailable):
            down.database.require()
        with pytest.raises(DatabaseUnavailable):
            keeper.current()
        with pytest.raises(DatabaseUnavailable):
            down.reads.summary(30, None)
    finally:
        down.stop()


VALID = {
    "tutor_id": "T00001",
    "subject": "algebra",
    "scheduled_start": "2026-11-03T16:00:00-05:00",
    "student_age": 12,
    "timezone": "America/New_York",
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"scheduled_start": "2026-11-03T16:00:00"}, "scheduled_start"),
        ({"scheduled_start": "tomorrow"}, "scheduled_start"),
        ({"student_age": -1}, "student_age"),
        ({"student_age": "twelve"}, "student_age"),
        ({"subject": ""}, "subject"),
        ({"subject": "x" * 129}, "subject"),
        ({"timezone": "Nowhere/City"}, "timezone"),
        ({"timezone": None}, "timezone"),
        ({"student_age": None, "timezone": None}, "student"),
        ({"tutor_id": ""}, "tutor_id"),
        ({"extra": 1}, "extra"),
    ],
)
def test_request_rules_name_the_field(change: dict, named: str) -> None:
    body = {**VALID, **change}
    with pytest.raises(ValidationError) as caught:
        SessionRequest.model_validate(body)
    assert named in str(caught.value)


def test_batch_rules() -> None:
    from pydantic import TypeAdapter

    from service.schemas import SessionBatch

    batch = TypeAdapter(SessionBatch)
    with pytest.raises(ValidationError, match="at least 1"):
        batch.validate_python([])
    with pytest.raises(ValidationError, match="at most"):
        batch.validate_python([VALID] * (MAX_BATCH_SIZE + 1))
    with pytest.raises(ValidationError, match="appears twice"):
        batch.validate_python([{**VALID, "session_id": "a"}, {**VALID, "session_id": "a"}])
    with pytest.raises(ValidationError, match=r"json_invalid|Invalid JSON"):
        batch.validate_json(b"{nope")
    assert len(batch.validate_python([VALID] * 3)) == 3
    assert SessionRequest.model_validate(
        {**VALID, "student_id": "S1", "student_age": None, "timezone": None}
    ).uses_student_record
    for subject in ("Algebra II", "AP Physics", "IELTS English", "Mathématiques", "a\tb"):
        assert SessionRequest.model_validate({**VALID, "subject": subject}).subject == subject
    for bad in ("", "x" * 129, "line\nbreak", "nul\x00"):
        with pytest.raises(ValidationError, match="subject"):
            SessionRequest.model_validate({**VALID, "subject": bad})


def test_package_without_champion_is_a_clear_error(fsp_env: str, tmp_path, monkeypatch) -> None:
    from service.packaging import package_champion

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    with pytest.raises(NoChampion, match="fsp train"):
        package_champion(get_settings())


def test_serve_without_bento_is_a_clear_error(tmp_path, monkeypatch) -> None:
    from service.packaging import NotPackaged, serve_packaged

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "empty"))
    with pytest.raises(NotPackaged, match="fsp package"):
        serve_packaged(get_settings(), port=3999)


def test_batch_json_equals_the_per_row_answers(trained_world: dict, logic) -> None:
    """/predict_batch's vectorised JSON path answers what `predict_records` answers."""
    import json

    from service.batchio import parse_batch

    sessions = _upcoming(trained_world["database_url"])
    body = [
        {
            "tutor_id": r.tutor_id,
            "subject": r.subject,
            "scheduled_start": r.scheduled_start.isoformat(),
            "student_id": r.student_id,
        }
        for r in sessions.itertuples()
    ]
    body.append({**body[0], "student_id": None, "student_age": 15, "timezone": "Asia/Kolkata"})
    body += [  # one tutor at other hours, days and ages: its cached pieces meet new ones
        {**body[0], "scheduled_start": f"2026-11-0{d}T0{d}:{m}:00+05:30", "student_age": 9 + d}
        | {"student_id": None, "timezone": "Asia/Kolkata"}
        for d in range(2, 8)
        for m in ("00", "45")
    ]
    rows = parse_batch(json.dumps(body))
    theirs = logic.predict_records([SessionRequest.model_validate(b) for b in body])
    for _ in range(2):  # the second time from the remembered pieces
        ours = [json.loads(text) for text in logic.predict_batch_json(rows)]
        assert ours == theirs


def test_batch_json_follows_a_new_snapshot(keeper, logic) -> None:
    """The batch answer's remembered tutor pieces are dropped with their snapshot: a
    rebuilt snapshot with other values answers with the new values and reasons."""
    from dataclasses import replace

    from service.fastpath import scored

    snapshot = keeper.current()
    tutors = list(snapshot.tutor_index)[:50]
    ok = {"subject": "geometry", "scheduled_start": DEMO_NOW + timedelta(days=2)}
    rows = [{**ok, "tutor_id": t, "student_age": 11, "timezone": "UTC"} for t in tutors]
    positions = snapshot.positions_of(tutors)
    before = logic.writer.write(
        logic.inputs.for_rows(rows, snapshot, positions), positions, tutors, snapshot
    )
    moved = replace(snapshot, tutor_features=snapshot.tutor_features[::-1].copy())
    model_rows = logic.inputs.for_rows(rows, moved, positions)
    after = logic.writer.write(model_rows, positions, tutors, moved)
    expected = scored(logic.model.scorer, model_rows, logic.model.threshold, "x")
    assert [json.loads(a)["top_risk_factors"] for a in after] == [
        e["top_risk_factors"] for e in expected
    ]
    assert after != before


def test_batch_row_errors_locate_each_problem(keeper, worker: Worker) -> None:
    """The bulk reference checks of /predict_batch still name each bad row and field."""
    from service.batchio import row_errors

    snapshot = keeper.current()
    ok = {
        "tutor_id": next(iter(snapshot.tutor_index)),
        "subject": "Robotics for Beginners",
        "scheduled_start": DEMO_NOW + timedelta(days=1),
        "student_id": next(iter(snapshot.students)),
    }
    assert (
        row_errors(
            [ok, {**ok, "student_id": None, "student_age": 9, "timezone": "UTC"}],
            worker.references,
        )
        == []
    )
    rows = [
        ok,
        {**ok, "tutor_id": "nobody"},
        {**ok, "student_id": "ghost"},
        {**ok, "student_id": None, "student_age": 10, "timezone": "Nowhere/City"},
        {**ok, "student_id": None},
        {**ok, "student_id": None, "student_age": 12},
    ]
    found = {(e["loc"], e["ctx"]["error"]) for e in row_errors(rows, worker.references)}
    assert found == {
        ((1, "tutor_id"), "unknown tutor_id 'nobody'"),
        ((2,), "student_id: unknown student_id 'ghost'"),
        ((3, "timezone"), "unknown IANA time zone 'Nowhere/City', e.g. 'America/New_York'"),
        ((4,), "student: give student_id, or student_age and timezone"),
        ((5,), "timezone: required with the other one when no student_id is given"),
    }
    twice = [{**ok, "session_id": "s1"}, {**ok, "session_id": "s1"}]
    assert "appears twice" in row_errors(twice, worker.references)[0]["ctx"]["error"]


def test_an_unseen_subject_is_scored_as_other_with_a_note(trained_world: dict, logic) -> None:
    """Any non-empty subject is accepted: one the champion never saw is scored as the
    shared 'other' level (two unseen subjects score alike), and the answer says so,
    on the per-row path and on the batch JSON path."""
    from service.batchio import parse_batch

    sessions = _upcoming(trained_world["database_url"]).head(3)
    known = _requests(sessions)
    unseen = [
        r.model_copy(update={"subject": s})
        for r, s in zip(known, ("Robotics", "Ωmega Chess", "AP Physics"), strict=True)
    ]
    other = [r.model_copy(update={"subject": "Underwater Basket Weaving"}) for r in known]
    answers, others = logic.predict(unseen), logic.predict(other)
    assert all(a.notes == [] for a in logic.predict(known))
    assert answers[0].notes == [
        "subject 'Robotics' was not seen in training (often enough); scored as 'other'"
    ]
    assert [a.risk_probability for a in answers] == [a.risk_probability for a in others]
    body = [{**r.model_dump(mode="json", exclude_none=True), "session_id": None} for r in unseen]
    batch = [json.loads(t) for t in logic.predict_batch_json(parse_batch(json.dumps(body)))]
    assert [b["notes"] for b in batch] == [a.notes for a in answers]
