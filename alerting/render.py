"""The tutor's preparation email: what goes in it and how it is rendered.

Tips are chosen from the session's OWN top risk factors (the `feature` of each
factor that raises risk), so two tutors get different advice for different
reasons. Every value is escaped: HTML through Jinja2's autoescape, plain text by
dropping control characters, headers by the email library's own quoting.
Templates are strict (an unknown variable is an error), so a broken template
fails the batch before anything is sent."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import format_datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from fsp.settings import PROJECT_ROOT

TEMPLATES_DIR: Final = PROJECT_ROOT / "templates"
HTML_TEMPLATE: Final = "alert_email.html.j2"
TEXT_TEMPLATE: Final = "alert_email.txt.j2"

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


def _tip_time(f: dict, ctx: SessionFacts) -> str:
    return (
        f"This session is in the {ctx.time_of_day} for your student ({ctx.local_time}). "
        "Energy is often lower then: keep the pace brisk, plan a short break, and "
        "check in on how they are feeling early on."
    )


def _tip_age(f: dict, ctx: SessionFacts) -> str:
    group = age_group(ctx.student_age)
    if group == "young child":
        return (
            f"Your student is {ctx.student_age} years old. Use short activities "
            "(5-10 minutes each), visuals, and plenty of praise; a parent may be nearby, "
            "so greet them too."
        )
    if group in ("pre-teen", "teenager"):
        return (
            f"Your student is {ctx.student_age}. Ask about their current class and "
            "upcoming tests, and let them pick the first problem so they feel in charge."
        )
    return (
        f"Your student is an adult ({ctx.student_age}). Ask what they need "
        f"{ctx.subject} for (work, exams, personal goals) and build the session around it."
    )


def _tip_subject(f: dict, ctx: SessionFacts) -> str:
    return (
        f"First {ctx.subject} sessions go best with a quick diagnostic: two or three "
        "short questions of rising difficulty show you where to start without a test feel."
    )


def _tip_new_tutor(f: dict, ctx: SessionFacts) -> str:
    days = int(ctx.features.get("tutor_tenure_days") or 0)
    opening = (
        f"You joined {days} days ago, so every first session builds your reputation."
        if days < NEW_TUTOR_DAYS
        else "A new student only knows you from your profile, so structure earns trust."
    )
    return (
        f"{opening} Write down a simple plan (welcome, a short diagnostic, one focused "
        "topic, a recap) and share it in the first minute."
    )


def _tip_first_sessions(f: dict, ctx: SessionFacts) -> str:
    return (
        "Some of your recent first sessions were rated lower than usual. Students rate "
        "first sessions on clarity and warmth: explain what you will do in this session "
        "at the start, and summarise what they learned at the end."
    )


def _tip_ratings(f: dict, ctx: SessionFacts) -> str:
    return (
        "Returning students' ratings suggest room to grow. Ask for feedback near the end "
        '("Was this pace right for you?") and adjust straight away.'
    )


def _tip_reliability(f: dict, ctx: SessionFacts) -> str:
    return (
        "Reliability matters most in a first session: confirm the time with your student "
        "today, and set a reminder 30 minutes before. If you must move it, do so as early "
        "as possible."
    )


def _tip_engagement(f: dict, ctx: SessionFacts) -> str:
    return (
        "Reply to your student's messages before the session and review their profile and "
        "any notes, so you arrive knowing their goals."
    )


def _tip_weekday(f: dict, ctx: SessionFacts) -> str:
    return (
        f"The session falls on a {ctx.weekday}. Students can be tired or busy then; a warm, "
        "relaxed opening helps."
    )


TIP_WRITERS: Final = {
    "local_hour": ("Time of day", _tip_time),
    "student_age": ("Your student", _tip_age),
    "subject": ("The subject", _tip_subject),
    "tutor_tenure_days": ("Getting established", _tip_new_tutor),
    "n_rated_first_sessions": ("Getting established", _tip_new_tutor),
    "session_count": ("Getting established", _tip_new_tutor),
    "n_ratings": ("Getting established", _tip_new_tutor),
    "first_session_success_rate": ("First impressions", _tip_first_sessions),
    "avg_rating": ("Feedback", _tip_ratings),
    "reschedule_rate": ("Reliability", _tip_reliability),
    "no_show_rate": ("Reliability", _tip_reliability),
    "engagement_score": ("Before the session", _tip_engagement),
    "engagement_recent_mean": ("Before the session", _tip_engagement),
    "local_dow": ("The day", _tip_weekday),
}
"""Feature → (tip title, writer). Features that share advice share a title, and a
title appears once per email."""

MAX_TIPS: Final = 3
NEW_TUTOR_DAYS: Final = 60
"""Below this tenure the email speaks of the tutor as new on the platform."""


@dataclass(frozen=True)
class SessionFacts:
    """Everything the email says about one session, already in people's terms."""

    session_id: str
    tutor_name: str
    tutor_email: str | None
    subject: str
    student_age: int
    local_time: str
    local_date: str
    weekday: str
    timezone: str
    utc_time: str
    starts_in: str
    time_of_day: str
    risk_level: str
    risk_score: int
    model_version: str
    message_id: str
    history: dict[str, str] = field(default_factory=dict)
    factors: list[dict[str, Any]] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)


def _starts_in(start: datetime, now: datetime) -> str:
    minutes = max(0, int((start - now).total_seconds() // 60))
    if minutes < 90:
        return f"in {minutes} minutes"
    hours = round(minutes / 60)
    if hours < 48:
        return f"in about {hours} hours"
    return f"in {round(hours / 24)} days"


def _history(features: dict[str, Any]) -> dict[str, str]:
    """The tutor's track record as of scoring, in words."""
    tenure = int(features.get("tutor_tenure_days") or 0)
    rated_first = int(features.get("n_rated_first_sessions") or 0)
    history = {
        "Time on the platform": f"{tenure} days" if tenure != 1 else "1 day",
        "Sessions taught": f"{int(features.get('session_count') or 0)}",
        "Rated first sessions": f"{rated_first}",
    }
    if rated_first:
        rate = float(features.get("first_session_success_rate") or 0.0)
        history["First sessions rated 3+ stars"] = f"about {round(rate * 100)}%"
    if int(features.get("n_ratings") or 0):
        history["Average rating from returning students"] = (
            f"{float(features.get('avg_rating') or 0.0):.1f} / 5"
        )
    return history


def _as_dict(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def session_facts(row: dict[str, Any], now: datetime) -> SessionFacts:
    """Facts of one due alert row (prediction + tutor + student's zone), in people's terms."""
    features = _as_dict(row.get("features")) or {}
    zone = str(row.get("timezone") or "UTC")
    start = row["scheduled_start"]
    local = start.astimezone(ZoneInfo(zone))
    hour = local.hour + local.minute / 60.0
    return SessionFacts(
        session_id=str(row["session_id"]),
        tutor_name=str(row.get("tutor_name") or "there"),
        tutor_email=row.get("recipient"),
        subject=subject_name(str(row.get("subject") or features.get("subject") or "")),
        student_age=int(features.get("student_age") or 0),
        local_time=local.strftime("%-I:%M %p %Z").replace(":00 ", " "),
        local_date=local.strftime("%A %-d %B"),
        weekday=local.strftime("%A"),
        timezone=zone,
        utc_time=start.astimezone(ZoneInfo("UTC")).strftime("%H:%M UTC"),
        starts_in=_starts_in(start, now),
        time_of_day=time_of_day(hour),
        risk_level=str(row["risk_level"]),
        risk_score=int(row["risk_score"]),
        model_version=str(row["model_version"]),
        message_id=str(row["message_id"]),
        history=_history(features),
        factors=list(_as_dict(row.get("top_risk_factors")) or []),
        features=dict(features),
    )


def choose_tips(facts: SessionFacts, limit: int = MAX_TIPS) -> list[dict[str, str]]:
    """Tips for the factors that raise THIS session's risk, strongest first, one per title."""
    tips: list[dict[str, str]] = []
    seen: set[str] = set()
    raising = [f for f in facts.factors if float(f.get("contribution", 0)) > 0]
    for factor in sorted(raising, key=lambda f: -float(f.get("contribution", 0))):
        entry = TIP_WRITERS.get(str(factor.get("feature")))
        if entry is None or entry[0] in seen:
            continue
        title, writer = entry
        seen.add(title)
        tips.append({"title": title, "text": writer(factor, facts), "feature": factor["feature"]})
        if len(tips) == limit:
            break
    if not tips:
        tips.append({"title": "The subject", "text": _tip_subject({}, facts), "feature": "subject"})
    return tips


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain(value: Any) -> str:
    """A value made safe for the plain-text part and headers: every control character
    (line breaks included: no header injection) becomes a space."""
    return _CONTROL.sub(" ", str(value))


class InvalidRecipient(ValueError):
    """The tutor's address cannot be used; only that email is set aside."""


class UnsafeHeader(HeaderParseError):
    """A header of the built message does not read back as it was meant (an extra
    header or recipient): that email is set aside, never sent."""


_ENCODED_WORD_START = "=?"
_HEADER_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 and C1 controls and the Unicode line/paragraph separators: all that str.splitlines
(and so the email library) may take for a line break."""
_MAX_DECODING_ROUNDS = 5
_ADDR_SPEC = re.compile(r"[^\s@<>()\[\],;:\\]+@[^\s@<>()\[\],;:\\\"]+")


def _decoded_once(text: str) -> str:
    """RFC 2047 encoded words decoded, the way the email library reads a header value
    it is given (it would decode `=?utf-8?q?=0D=0A?=` into a real line break)."""
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, UnicodeError, HeaderParseError, ValueError):
        try:  # an unknown charset, or raw non-ASCII beside an encoded word
            return str(default_policy.header_factory("X-Decode", text))
        except (LookupError, UnicodeError, HeaderParseError, ValueError):
            return text


def header_text(value: Any) -> str:
    """A value made safe for a header built from data: encoded words decoded (until
    nothing changes), every control character or line separator (CR, LF, NEL, U+2028:
    no header injection) a space, and any `=?` left split as `= ?`, so the library
    cannot decode a line break into it later."""
    text = str(value)
    for _ in range(_MAX_DECODING_ROUNDS):
        if _ENCODED_WORD_START not in text:
            break
        decoded = _decoded_once(text)
        if decoded == text:
            break
        text = decoded
    return _HEADER_BREAKS.sub(" ", text).replace(_ENCODED_WORD_START, "= ?").strip()


def safe_address(display_name: Any, addr_spec: Any) -> Address:
    """One address for a header: the display name through `header_text`, the address
    itself plain (one @, no spaces, controls, brackets or encoded words) and read back
    by the library unchanged. InvalidRecipient otherwise."""
    spec = str(addr_spec or "")
    if not _ADDR_SPEC.fullmatch(spec) or _HEADER_BREAKS.search(spec) or _ENCODED_WORD_START in spec:
        raise InvalidRecipient(f"invalid recipient {spec!r}: not a plain address")
    try:
        address = Address(header_text(display_name), addr_spec=spec)
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise InvalidRecipient(f"invalid recipient {spec!r}: {exc}") from exc
    if address.addr_spec != spec:
        raise InvalidRecipient(f"invalid recipient {spec!r}: reads as {address.addr_spec!r}")
    return address


def recipient(facts: SessionFacts) -> Address:
    """The To: address with the tutor's name as display name (quoted by the library)."""
    return safe_address(facts.tutor_name, facts.tutor_email)


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


def template_context(facts: SessionFacts) -> dict[str, Any]:
    """What both templates see."""
    colour, background = BADGE_COLOURS.get(facts.risk_level, BADGE_COLOURS["HIGH"])
    return {
        "s": facts,
        "tips": choose_tips(facts),
        "best_practices": BEST_PRACTICES,
        "priority": PRIORITY_WORDS.get(facts.risk_level, facts.risk_level.title()),
        "badge_colour": colour,
        "badge_background": background,
    }


@dataclass(frozen=True)
class RenderedEmail:
    """Both parts and the subject line of one email."""

    subject: str
    text: str
    html: str


def render(facts: SessionFacts, env: Environment | None = None) -> RenderedEmail:
    """Render both parts; any template error propagates (fails the batch loudly)."""
    env = env or _environment()
    context = template_context(facts)
    subject = plain(
        f"Preparing for your first {facts.subject} session on {facts.local_date}"
    ).strip()
    return RenderedEmail(
        subject=subject,
        text=env.get_template(TEXT_TEMPLATE).render(context),
        html=env.get_template(HTML_TEMPLATE).render(context),
    )


def message_id_for(session_id: str, sender: str) -> str:
    """The deterministic Message-ID of a session's alert: the same session always gets
    the same id, so a delivery can be recognised (and deduplicated) after a crash."""
    domain = sender.rpartition("@")[2] or "localhost"
    slug = re.sub(r"[^A-Za-z0-9_-]", "", session_id)[:40] or "session"
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:12]
    return f"<fsp-alert.{slug}.{digest}@{domain}>"


HEADERS: Final = (
    "Subject",
    "From",
    "To",
    "Message-ID",
    "Date",
    "X-FSP-Session-Id",
    "X-FSP-Model-Version",
    "Auto-Submitted",
)
"""The headers an alert sets, besides the MIME ones; nothing else may appear."""
_MIME_HEADERS: Final = ("Content-Type", "MIME-Version", "Content-Transfer-Encoding")


def build_message(
    facts: SessionFacts, rendered: RenderedEmail, sender: str, now: datetime
) -> EmailMessage:
    """A multipart/alternative message (text first, HTML preferred) with safe headers:
    every value built from data goes through `header_text` / `safe_address`, and the
    message is read back to prove it has these headers only and one recipient."""
    message = EmailMessage()
    to = recipient(facts)
    message["Subject"] = header_text(rendered.subject)
    message["From"] = safe_address("First-session coach", sender)
    message["To"] = to
    message["Message-ID"] = header_text(facts.message_id)
    message["Date"] = format_datetime(now)
    message["X-FSP-Session-Id"] = header_text(facts.session_id)
    message["X-FSP-Model-Version"] = header_text(facts.model_version)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    check_headers(message, to.addr_spec)
    return message


def check_headers(message: EmailMessage, to: str) -> None:
    """UnsafeHeader unless the message, as it will be sent, reads back with exactly the
    alert's headers, once each, and `to` as its single recipient."""
    parsed = message_from_bytes(message.as_bytes(), policy=default_policy)
    names = [name.lower() for name in parsed]
    allowed = {name.lower() for name in (*HEADERS, *_MIME_HEADERS)}
    extra = sorted(set(names) - allowed)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if extra or repeated:
        raise UnsafeHeader(f"unexpected headers {extra or repeated} in the message to {to!r}")
    try:
        addresses = [a.addr_spec for a in parsed["To"].addresses]
    except (AttributeError, IndexError, ValueError, HeaderParseError) as exc:
        raise UnsafeHeader(f"the To header does not read back: {exc}") from exc
    if addresses != [to]:
        raise UnsafeHeader(f"the To header reads as {addresses!r}, not [{to!r}]")


def compose(row: dict[str, Any], now: datetime, sender: str, env: Environment | None = None):
    """One due alert row → (facts, EmailMessage)."""
    facts = session_facts(row, now)
    return facts, build_message(facts, render(facts, env), sender, now)


def environment() -> Environment:
    """The Jinja2 environment (strict, HTML autoescaped), built once per batch."""
    return _environment()
