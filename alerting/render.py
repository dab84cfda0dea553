"""The tutor's preparation email: what goes in it and how it is rendered.

One email (a "letter") goes to one tutor and lists every high-risk first session of
that tutor due in the same run; a single session is a letter of one. For each
session it gives the time (student's zone, UTC, and the tutor's own zone where the
platform knows it) and tips chosen from that session's OWN top risk factors, each
saying why it is there (alerting.tips, catalogue in templates/tips.yaml). The
tutor's record is stated as counts from the platform's tables (alerting.record),
never as a smoothed model feature.

Every value is escaped: HTML through Jinja2's autoescape, plain text by dropping
control characters, headers by alerting.headers. Templates are strict (an unknown
variable is an error), so a broken template fails the batch before anything is sent."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from alerting.headers import (
    HEADERS,
    InvalidRecipient,
    UnsafeHeader,
    check_headers,
    header_text,
    plain,
    safe_address,
)
from alerting.record import TutorRecord
from alerting.tips import MAX_TIPS, Tip, load_catalogue
from alerting.tips import choose_tips as choose_catalogue_tips
from fsp.settings import PROJECT_ROOT

__all__ = [
    "HEADERS",
    "InvalidRecipient",
    "UnsafeHeader",
    "header_text",
    "plain",
    "safe_address",
]

log = logging.getLogger(__name__)

TEMPLATES_DIR: Final = PROJECT_ROOT / "templates"
HTML_TEMPLATE: Final = "alert_email.html.j2"
TEXT_TEMPLATE: Final = "alert_email.txt.j2"
TIPS_FILE: Final = "tips.yaml"

BADGE_COLOURS: Final[dict[str, tuple[str, str]]] = {
    "LOW": ("#2e7d32", "#e8f5e9"),
    "MEDIUM": ("#8a6d00", "#fff8e1"),
    "HIGH": ("#b45309", "#fff3e0"),
    "CRITICAL": ("#b71c1c", "#ffebee"),
}
"""(text/border colour, background) per risk level: green, amber, orange, red."""

PRIORITY_WORDS: Final[dict[str, str]] = {
    "LOW": "Low",
    "MEDIUM": "Medium",
    "HIGH": "High",
    "CRITICAL": "Very high",
}

BEST_PRACTICES: Final[tuple[str, ...]] = (
    "Join five minutes early and test your audio, video and whiteboard.",
    "Open with two minutes of getting to know each other: goals, school, what has "
    "and hasn't worked before.",
    "Agree on one concrete goal for this session and check it off before you finish.",
    "End by booking the next session together and saying what you will cover.",
)
NEW_TUTOR_DAYS: Final = 60
"""Below this tenure the email speaks of the tutor as new on the platform."""


def subject_name(subject: str) -> str:
    """The subject as the platform spells it; a code written with underscores
    (`computer_science`) reads with spaces. No list of subjects: any platform's work."""
    return " ".join(subject.replace("_", " ").split())


def time_of_day(local_hour: float) -> str:
    """Words for the student's local time of day."""
    if local_hour < 8:
        return "early morning"
    if local_hour < 12:
        return "morning"
    if local_hour < 17:
        return "afternoon"
    if local_hour < 21:
        return "evening"
    return "late evening"


def age_group(age: float) -> str:
    """The age band that changes how a first session should be run."""
    if age < 10:
        return "young child"
    if age < 14:
        return "pre-teen"
    if age < 18:
        return "teenager"
    return "adult learner"


@dataclass(frozen=True)
class LinkPolicy:
    """Where the email's links lead, and whether opens and clicks are tracked.

    Tracking on: a 1×1 image `<base>/api/first-session/t/<token>.gif` and every link
    through `<base>/api/first-session/r/<token>`; the token is the delivery's random
    `tracking_token`, nothing else about the tutor or the session is in the URL."""

    track: bool = False
    base_url: str = "http://127.0.0.1:3000"
    session_url_template: str = "https://tutoring.example/sessions/{session_id}"

    def target(self, session_id: str) -> str:
        """The platform's page of the session (where a click finally leads)."""
        return self.session_url_template.replace("{session_id}", session_id)

    def link(self, session_id: str, token: str | None) -> str:
        """The URL the email carries for the session."""
        if self.track and token:
            return f"{self.base_url.rstrip('/')}/api/first-session/r/{token}"
        return self.target(session_id)

    def pixel(self, token: str | None) -> str | None:
        """The open-tracking image URL, or None (tracking off or no token)."""
        if self.track and token:
            return f"{self.base_url.rstrip('/')}/api/first-session/t/{token}.gif"
        return None


@dataclass(frozen=True)
class SessionFacts:
    """Everything the email says about one session, already in people's terms."""

    session_id: str
    tutor_name: str
    tutor_email: str | None
    subject: str
    student_age: int
    age_group: str
    local_time: str
    local_date: str
    weekday: str
    timezone: str
    utc_time: str
    tutor_time: str | None
    starts_in: str
    time_of_day: str
    risk_level: str
    risk_score: int
    model_version: str
    message_id: str
    link: str
    tracking_token: str | None = None
    record: TutorRecord | None = None
    factors: list[dict[str, Any]] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)
    tips: tuple[Tip, ...] = ()

    @property
    def priority(self) -> str:
        """The risk level in words."""
        return PRIORITY_WORDS.get(self.risk_level, self.risk_level.title())

    @property
    def badge_colour(self) -> str:
        return BADGE_COLOURS.get(self.risk_level, BADGE_COLOURS["HIGH"])[0]

    @property
    def badge_background(self) -> str:
        return BADGE_COLOURS.get(self.risk_level, BADGE_COLOURS["HIGH"])[1]


@dataclass(frozen=True)
class LetterFacts:
    """One email: a tutor, their record, and their sessions (earliest first)."""

    tutor_name: str
    tutor_email: str | None
    sessions: tuple[SessionFacts, ...]
    history: dict[str, str]
    message_id: str
    pixel_url: str | None

    @property
    def session_ids(self) -> tuple[str, ...]:
        return tuple(s.session_id for s in self.sessions)


def _starts_in(start: datetime, now: datetime) -> str:
    minutes = max(0, int((start - now).total_seconds() // 60))
    if minutes < 90:
        return f"in {minutes} minutes"
    hours = round(minutes / 60)
    if hours < 48:
        return f"in about {hours} hours"
    return f"in {round(hours / 24)} days"


def _clock(moment: datetime) -> str:
    """`9:30 PM EST`, `10 AM CET` (minutes only when not on the hour)."""
    return moment.strftime("%-I:%M %p %Z").replace(":00 ", " ")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def history_from_record(record: TutorRecord) -> dict[str, str]:
    """The tutor's record as of scoring, as counts from the platform's tables."""
    days = record.tenure_days
    history = {
        "Time on the platform": _count(days, "day"),
        "Sessions taught": f"{record.completed}",
    }
    if record.first_rated:
        history["First sessions"] = (
            f"{record.first_good} of {_count(record.first_rated, 'rated first session')}"
            " at 3 stars or more"
        )
    else:
        history["First sessions"] = "none rated yet"
    average = record.average_rating
    history["Ratings from returning students"] = (
        f"average {average:.1f} from {_count(record.later_rated, 'rating')}"
        if average is not None
        else "none yet"
    )
    if record.ended:
        history["Rescheduled or missed"] = (
            f"{record.rescheduled + record.no_show} of {_count(record.ended, 'past session')}"
        )
    return history


def history_from_features(features: dict[str, Any]) -> dict[str, str]:
    """Without the platform's record (a row built elsewhere): only the raw counts the
    features carry, never a smoothed share or average."""
    return {
        "Time on the platform": _count(int(features.get("tutor_tenure_days") or 0), "day"),
        "Sessions taught": f"{int(features.get('session_count') or 0)}",
        "Rated first sessions": f"{int(features.get('n_rated_first_sessions') or 0)}",
        "Ratings from returning students": f"{int(features.get('n_ratings') or 0)}",
    }


def _as_dict(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _tutor_time(start: datetime, student_zone: str, record: TutorRecord | None) -> str | None:
    """The start in the tutor's own zone, when the platform knows it and it differs."""
    zone = record.tutor_zone if record else None
    if not zone or zone == student_zone:
        return None
    try:
        return _clock(start.astimezone(ZoneInfo(zone)))
    except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError
        log.warning("tutor time zone %r unknown; the email shows the student's zone only", zone)
        return None


def session_facts(
    row: dict[str, Any], now: datetime, links: LinkPolicy | None = None
) -> SessionFacts:
    """Facts of one due alert row (prediction + tutor + student's zone + record), in
    people's terms, with its tips."""
    links = links or LinkPolicy()
    features = _as_dict(row.get("features")) or {}
    zone = str(row.get("timezone") or "UTC")
    start: datetime = row["scheduled_start"]
    local = start.astimezone(ZoneInfo(zone))
    record = row.get("record") if isinstance(row.get("record"), TutorRecord) else None
    session_id = str(row["session_id"])
    token = row.get("tracking_token") or None
    age = int(features.get("student_age") or 0)
    facts = SessionFacts(
        session_id=session_id,
        tutor_name=str(row.get("tutor_name") or "there"),
        tutor_email=row.get("recipient"),
        subject=subject_name(str(row.get("subject") or features.get("subject") or "")),
        student_age=age,
        age_group=age_group(age),
        local_time=_clock(local),
        local_date=local.strftime("%A %-d %B"),
        weekday=local.strftime("%A"),
        timezone=zone,
        utc_time=start.astimezone(ZoneInfo("UTC")).strftime("%H:%M UTC"),
        tutor_time=_tutor_time(start, zone, record),
        starts_in=_starts_in(start, now),
        time_of_day=time_of_day(local.hour + local.minute / 60.0),
        risk_level=str(row["risk_level"]),
        risk_score=int(row["risk_score"]),
        model_version=str(row["model_version"]),
        message_id=str(row.get("message_id") or ""),
        link=links.link(session_id, token),
        tracking_token=token,
        record=record,
        factors=list(_as_dict(row.get("top_risk_factors")) or []),
        features=dict(features),
    )
    return _with_tips(facts)


def _with_tips(facts: SessionFacts) -> SessionFacts:
    return dataclasses.replace(facts, tips=tuple(choose_tips(facts)))


def choose_tips(facts: SessionFacts, limit: int = MAX_TIPS) -> list[Tip]:
    """Tips for the factors that raise THIS session's risk, strongest first, one per
    title, each with its one-line reason (catalogue: templates/tips.yaml)."""
    catalogue = load_catalogue(TEMPLATES_DIR / TIPS_FILE)
    return choose_catalogue_tips(catalogue, facts.factors, {"s": facts, "r": facts.record}, limit)


def message_id_for(session_id: str, sender: str) -> str:
    """The deterministic Message-ID of a session's alert: the same session always gets
    the same id, so a delivery can be recognised (and deduplicated) after a crash."""
    domain = sender.rpartition("@")[2] or "localhost"
    slug = re.sub(r"[^A-Za-z0-9_-]", "", session_id)[:40] or "session"
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:12]
    return f"<fsp-alert.{slug}.{digest}@{domain}>"


def letter_message_id(session_ids: list[str] | tuple[str, ...], sender: str) -> str:
    """The Message-ID of one email covering `session_ids`: the session's own id for a
    single session, else one derived from the sorted ids (same set, same id)."""
    ids = sorted(session_ids)
    if len(ids) == 1:
        return message_id_for(ids[0], sender)
    domain = sender.rpartition("@")[2] or "localhost"
    slug = re.sub(r"[^A-Za-z0-9_-]", "", ids[0])[:40] or "session"
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
    return f"<fsp-alert.{slug}.{len(ids)}s.{digest}@{domain}>"


def letter_facts(
    rows: list[dict[str, Any]], now: datetime, sender: str, links: LinkPolicy | None = None
) -> LetterFacts:
    """One letter from the due rows of one tutor (all with the same recipient)."""
    if not rows:
        raise ValueError("a letter needs at least one session")
    ordered = sorted(rows, key=lambda r: (r["scheduled_start"], str(r["session_id"])))
    sessions = [session_facts(r, now, links) for r in ordered]
    first = sessions[0]
    record = next((s.record for s in sessions if s.record is not None), None)
    history = history_from_record(record) if record else history_from_features(first.features)
    pixel_token = min((s.tracking_token for s in sessions if s.tracking_token), default=None)
    return LetterFacts(
        tutor_name=first.tutor_name,
        tutor_email=first.tutor_email,
        sessions=tuple(sessions),
        history=history,
        message_id=letter_message_id([s.session_id for s in sessions], sender),
        pixel_url=(links or LinkPolicy()).pixel(pixel_token),
    )


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=True
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["plain"] = plain
    return env


def template_context(letter: LetterFacts) -> dict[str, Any]:
    """What both templates see."""
    return {
        "letter": letter,
        "sessions": letter.sessions,
        "best_practices": BEST_PRACTICES,
    }


@dataclass(frozen=True)
class RenderedEmail:
    """Both parts and the subject line of one email."""

    subject: str
    text: str
    html: str


def subject_line(letter: LetterFacts) -> str:
    """One session: its subject and day; several: how many and from which day."""
    first = letter.sessions[0]
    if len(letter.sessions) == 1:
        return plain(f"Preparing for your first {first.subject} session on {first.local_date}")
    return plain(
        f"Preparing for your {len(letter.sessions)} first sessions from {first.local_date}"
    )


def render(letter: LetterFacts, env: Environment | None = None) -> RenderedEmail:
    """Render both parts; any template error propagates (fails the batch loudly)."""
    env = env or _environment()
    context = template_context(letter)
    return RenderedEmail(
        subject=subject_line(letter).strip(),
        text=env.get_template(TEXT_TEMPLATE).render(context),
        html=env.get_template(HTML_TEMPLATE).render(context),
    )


def build_message(
    letter: LetterFacts, rendered: RenderedEmail, sender: str, now: datetime
) -> EmailMessage:
    """A multipart/alternative message (text first, HTML preferred) with safe headers:
    every value built from data goes through `header_text` / `safe_address`, and the
    message is read back to prove it has these headers only and one recipient."""
    message = EmailMessage()
    to = safe_address(letter.tutor_name, letter.tutor_email)
    versions = sorted({s.model_version for s in letter.sessions})
    message["Subject"] = header_text(rendered.subject)
    message["From"] = safe_address("First-session coach", sender)
    message["To"] = to
    message["Message-ID"] = header_text(letter.message_id)
    message["Date"] = format_datetime(now)
    message["X-FSP-Session-Id"] = header_text(", ".join(letter.session_ids))
    message["X-FSP-Model-Version"] = header_text(", ".join(versions))
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    check_headers(message, to.addr_spec)
    return message


def compose_letter(
    rows: list[dict[str, Any]],
    now: datetime,
    sender: str,
    env: Environment | None = None,
    links: LinkPolicy | None = None,
) -> tuple[LetterFacts, EmailMessage]:
    """The due rows of one tutor → (letter facts, EmailMessage)."""
    letter = letter_facts(rows, now, sender, links)
    return letter, build_message(letter, render(letter, env), sender, now)


def compose(
    row: dict[str, Any],
    now: datetime,
    sender: str,
    env: Environment | None = None,
    links: LinkPolicy | None = None,
) -> tuple[SessionFacts, EmailMessage]:
    """One due alert row → (its session facts, the EmailMessage of a letter of one)."""
    letter, message = compose_letter([row], now, sender, env, links)
    return letter.sessions[0], message


def environment() -> Environment:
    """The Jinja2 environment (strict, HTML autoescaped), built once per batch."""
    return _environment()
