"""The tip catalogue (templates/tips.yaml) and the choice of tips for one session.

A session's tips follow its OWN top risk factors, strongest first: the first tip is
always the one for the factor that raised its risk most (a fallback tip naming that
factor when the catalogue has no entry for it, e.g. a feature added to the model
after the catalogue was written), and each tip says in one line why it is there."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import yaml
from jinja2 import Environment, StrictUndefined, Template

from fsp.features import FACTOR_LABELS

log = logging.getLogger(__name__)

MAX_TIPS: Final = 3
TIP_FIELDS: Final = ("title", "reason", "advice")


class TipCatalogueError(ValueError):
    """The tip catalogue file is malformed (the message names the entry)."""


@dataclass(frozen=True)
class TipTemplate:
    """One catalogue entry, compiled."""

    title: str
    reason: Template
    advice: Template


@dataclass(frozen=True)
class Catalogue:
    """Tips by feature name, and the one used for any other factor."""

    tips: dict[str, TipTemplate]
    fallback: TipTemplate

    def entry(self, feature: str) -> TipTemplate:
        """The feature's tip, or the fallback (logged: the catalogue lags the model)."""
        found = self.tips.get(feature)
        if found is None:
            log.warning("no tip for risk factor %r in the catalogue; using the fallback", feature)
            return self.fallback
        return found


@dataclass(frozen=True)
class Tip:
    """A tip as it appears in one email."""

    feature: str
    title: str
    reason: str
    advice: str


def _count(n: Any, noun: str) -> str:
    n = int(n)
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _pct(share: Any) -> str:
    return f"{round(float(share) * 100)}%"


def _text_environment() -> Environment:
    """Plain text (the HTML template escapes it later), strict, whitespace folded."""
    env = Environment(autoescape=False, undefined=StrictUndefined)  # noqa: S701
    env.filters["count"] = _count
    env.filters["pct"] = _pct
    return env


def _compile(env: Environment, name: str, raw: Any) -> TipTemplate:
    if not isinstance(raw, dict) or any(not isinstance(raw.get(f), str) for f in TIP_FIELDS):
        raise TipCatalogueError(f"tip {name!r} needs the text fields {', '.join(TIP_FIELDS)}")
    return TipTemplate(
        title=raw["title"].strip(),
        reason=env.from_string(raw["reason"]),
        advice=env.from_string(raw["advice"]),
    )


@lru_cache(maxsize=4)
def load_catalogue(path: Path) -> Catalogue:
    """Read and compile the catalogue (once per path and process)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("tips"), dict):
        raise TipCatalogueError(f"{path}: needs a `tips` mapping and a `fallback` tip")
    env = _text_environment()
    return Catalogue(
        tips={str(k): _compile(env, str(k), v) for k, v in data["tips"].items()},
        fallback=_compile(env, "fallback", data.get("fallback")),
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def write_tip(entry: TipTemplate, factor: dict[str, Any], context: dict[str, Any]) -> Tip:
    """The entry's words for this factor and session (`context`: `s` and `r`)."""
    feature = str(factor.get("feature"))
    names = {
        **context,
        "label": factor.get("label") or FACTOR_LABELS.get(feature, feature.replace("_", " ")),
        "value": factor.get("value"),
    }
    return Tip(
        feature=feature,
        title=entry.title,
        reason=_one_line(entry.reason.render(names)),
        advice=_one_line(entry.advice.render(names)),
    )


def raising_factors(factors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The factors that raise this session's risk, strongest first."""
    raising = [f for f in factors if float(f.get("contribution") or 0) > 0 and f.get("feature")]
    return sorted(raising, key=lambda f: -float(f["contribution"]))


def choose_tips(
    catalogue: Catalogue,
    factors: list[dict[str, Any]],
    context: dict[str, Any],
    limit: int = MAX_TIPS,
) -> list[Tip]:
    """Up to `limit` tips for the session's risk-raising factors, one per title; the
    first always for its top factor. With no raising factor: the subject's tip."""
    tips: list[Tip] = []
    for factor in raising_factors(factors):
        entry = catalogue.entry(str(factor["feature"]))
        if any(t.title == entry.title for t in tips):
            continue
        tips.append(write_tip(entry, factor, context))
        if len(tips) == limit:
            break
    if not tips:
        tips.append(write_tip(catalogue.entry("subject"), {"feature": "subject"}, context))
    return tips
