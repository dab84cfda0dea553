"""What the trained champion must do whatever its metrics: risk moves the right way
with a tutor's track record, and unknown subjects still get a valid answer."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from fsp.constants import risk_level
from fsp.features import TutorHistory, build_model_input
from fsp.model_store import make_client
from fsp.scoring import load_scoring_model
from fsp.settings import get_settings
from tests.conftest import DEMO_NOW

pytestmark = pytest.mark.services
ONBOARDED = DEMO_NOW - timedelta(days=200)
SESSION = {
    "subject": "algebra",
    "scheduled_start": DEMO_NOW + timedelta(hours=30),
    "timezone": "America/Chicago",
    "student_age": 12,
}


@pytest.fixture(scope="module")
def champion(trained_world):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained_world['state_dir'] / 'mlflow.db'}")
    get_settings.cache_clear()
    model = load_scoring_model(make_client(get_settings()), get_settings().model_name)
    mp.undo()
    get_settings.cache_clear()
    return model


def _tutor_with(
    first_ratings: list[int],
    no_shows: int = 0,
    completed: int = 40,
    subjects: list[str] | None = None,
) -> pd.DataFrame:
    """Model input for one upcoming session of a tutor with exactly this history (first
    sessions in `subjects`, default the session's, all with students of its age)."""
    t = [
        ONBOARDED + timedelta(days=1, hours=i)
        for i in range(len(first_ratings) + completed + no_shows)
    ]
    statuses = ["completed"] * (len(first_ratings) + completed) + ["no_show"] * no_shows
    sessions = pd.DataFrame(
        {
            "tutor_id": "A",
            "scheduled_start": t,
            "duration_minutes": 60,
            "status": statuses,
            "is_first_session": False,
        }
    )
    feedback = pd.DataFrame(
        {
            "tutor_id": "A",
            "is_first_session": True,
            "rating": first_ratings,
            "submitted_at": t[: len(first_ratings)],
            "subject": subjects or [SESSION["subject"]] * len(first_ratings),
            "student_age": SESSION["student_age"],
        }
    )
    feedback = feedback.astype({"rating": float})
    history = TutorHistory.from_frames(
        pd.DataFrame({"tutor_id": ["A"], "onboarded_at": [ONBOARDED]}),
        sessions,
        feedback,
        pd.DataFrame({"tutor_id": ["A"], "as_of": [ONBOARDED], "score": [0.5]}),
    )
    return build_model_input(history, pd.DataFrame([{"tutor_id": "A", **SESSION}]), [DEMO_NOW])


def test_more_failed_first_sessions_never_lower_the_risk(champion):
    risks = [champion.probabilities(_tutor_with([1] * k + [5] * (20 - k)))[0] for k in range(21)]
    assert np.all(np.diff(risks) >= -1e-12), risks
    assert risks[-1] > risks[0]


def test_more_poor_first_sessions_in_this_subject_never_lower_the_risk(champion):
    """Ten first sessions in this subject and ten good ones in another: the more of the
    first ten went badly, the higher the risk, whichever feature set the champion reads."""
    subjects = [SESSION["subject"]] * 10 + ["another subject"] * 10
    risks = [
        champion.probabilities(_tutor_with([1] * k + [5] * (20 - k), subjects=subjects))[0]
        for k in range(11)
    ]
    assert np.all(np.diff(risks) >= -1e-12), risks
    assert risks[-1] > risks[0]


def test_more_no_shows_never_lower_the_risk(champion):
    risks = [champion.probabilities(_tutor_with([4] * 5, no_shows=k))[0] for k in range(0, 12, 2)]
    assert np.all(np.diff(risks) >= -1e-12), risks


def test_an_unknown_subject_still_gets_a_valid_probability(champion):
    X = _tutor_with([4] * 5)
    X.loc[0, "subject"] = "underwater_basket_weaving"
    p = champion.probabilities(X)[0]
    assert 0.0 < p < 1.0


def test_reasons_are_exact_for_the_linear_champion(champion):
    if not champion.is_linear:
        pytest.skip("the champion is not linear; occlusion reasons are approximate by design")
    from scipy.special import logit

    X = _tutor_with([1, 1, 5, 5])
    pipeline, calibrator = champion._parts
    baseline = -(calibrator.a_ * pipeline.named_steps["clf"].intercept_[0] + calibrator.b_)
    total = baseline + champion.contributions(X).sum(axis=1)
    assert np.allclose(total, logit(champion.probabilities(X)), atol=1e-9)


def test_risk_bands_rise_with_probability():
    order = ["LOW", "MEDIUM", "HIGH", "CRITICAL"]
    levels = [order.index(risk_level(p)) for p in np.linspace(0, 1, 101)]
    assert levels == sorted(levels) and set(levels) == {0, 1, 2, 3}
