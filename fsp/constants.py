"""Every constant the system shares lives here, once: alias names, risk bands,
thresholds. Change a value here and every role follows. No categorical vocabulary
lives here (or anywhere outside the demo generator): the model learns it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

CHAMPION_ALIAS: Final = "champion"
CHALLENGER_ALIAS: Final = "challenger"

POOR_RATING_BELOW: Final = 3
"""A first session rated strictly below this many stars is poor (the label)."""

RISK_BANDS: Final[tuple[tuple[str, float], ...]] = (
    ("LOW", 0.0),
    ("MEDIUM", 0.20),
    ("HIGH", 0.40),
    ("CRITICAL", 0.60),
)
"""(band, lower bound of risk_probability), ascending. Probabilities are calibrated,
so the bands mean the same thing for every model version."""

PRECISION_TARGET: Final = 0.60
"""The alert precision target: choose the alert threshold to reach it."""


def risk_level(probability: float) -> str:
    """The risk band of a calibrated probability."""
    level = RISK_BANDS[0][0]
    for name, lower in RISK_BANDS:
        if probability >= lower:
            level = name
    return level


def risk_score(probability: float) -> int:
    """The 0-100 score shown to people: the probability in percent, rounded."""
    return round(max(0.0, min(1.0, probability)) * 100)


MONITOR_WINDOW_DAYS: Final = 28
"""Days of sessions a monitoring run evaluates by default: four whole weeks, since the
weekday mix is only a distribution over whole weeks."""

EARLIEST_START: Final = datetime(1678, 1, 1, tzinfo=UTC)
LATEST_START: Final = datetime(2262, 1, 1, tzinfo=UTC)
"""The sane range of a stored scheduled_start: inside pandas' (1677-2262) and Python's
(year < 10000) datetimes. A row outside it (written by an older version) is skipped
with a counted reason by every flow and read endpoint instead of breaking them."""


AGE_BAND_EDGES: Final[tuple[int, ...]] = (11, 14, 18, 25)
"""Fixed student age bands for the tutor's history "with students of this age band":
under 11 (primary school), 11-13 (middle school), 14-17 (high school), 18-24 (college
age), 25 and over (adults). A general schooling convention, not learned from data and
not any one platform's vocabulary; a band holds ages >= its lower edge."""

RECENT_HALF_LIFE_SESSIONS: Final = 10.0
"""Half-life, in the tutor's own rated first sessions, of the recency-weighted poor
first-session rate: the latest counts 1, the tenth latest 1/2, the twentieth 1/4. In
sessions, not days: a busy tutor's last month says as much as a quiet tutor's last
half year, and the feature then changes only when a rating arrives."""

ENGAGEMENT_TREND_DAYS: Final = 28
"""The engagement trend compares the mean score published in the last this many days
with the mean of the same span just before it (a few weekly scores each)."""
