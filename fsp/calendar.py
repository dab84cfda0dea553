"""Wall-clock time in a student's time zone: the one time-zone engine of the project.

Every conversion goes through `zoneinfo` with the IANA tables of the `tzdata` package
pinned in uv.lock (not the operating system's copy, which ages with the machine:
Debian 12's still lacks British Columbia's move to permanent daylight time), directly
for one instant and through pandas' `tz_convert` with the same `ZoneInfo` object for
many, so the features, the API and the emails read the same tables. Instants are
epoch seconds (floored by the caller)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from fsp.errors import InvalidInput


@lru_cache(maxsize=1)
def zone_names() -> frozenset[str]:
    """Every zone name the pinned tables know (the `zones` index `tzdata` ships)."""
    return frozenset(resources.files("tzdata").joinpath("zones").read_text().split())


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` from the pinned tables, or InvalidInput naming it. Only a
    listed name is opened, so no caller's text ever becomes a file path."""
    if not isinstance(name, str) or name not in zone_names():
        raise InvalidInput(f"unknown time zone {name!r} (not in the IANA tables)")
    with resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as table:
        return ZoneInfo.from_file(table, key=name)


def known_zone(name: object) -> bool:
    """Whether `name` names a time zone the feature code can convert to."""
    return isinstance(name, str) and name in zone_names()


@dataclass(frozen=True)
class LocalCalendar:
    """Wall-clock fields of instants, each in its own time zone."""

    hour: np.ndarray  # hour + minute / 60
    dow: np.ndarray  # Monday = 0
    year: np.ndarray
    month_day: np.ndarray  # month * 100 + day

    def age(self, birth_year: np.ndarray, birth_month_day: np.ndarray) -> np.ndarray:
        """Whole years since a birth date, on each local date."""
        return self.year - birth_year - (self.month_day < birth_month_day)


def _one_instant(second: int, name: str) -> LocalCalendar:
    """One instant (a /predict call): zoneinfo directly, no pandas index to build."""
    local = datetime.fromtimestamp(int(second), zone(name))
    return LocalCalendar(
        hour=np.array([local.hour + local.minute / 60.0]),
        dow=np.array([float(local.weekday())]),
        year=np.array([local.year], np.int64),
        month_day=np.array([local.month * 100 + local.day], np.int64),
    )


def _fields(seconds: np.ndarray, name: str) -> tuple[np.ndarray, ...]:
    """(hour, dow, year, month_day) of instants in one zone, through pandas."""
    local = pd.DatetimeIndex(pd.to_datetime(seconds, unit="s", utc=True)).tz_convert(zone(name))
    hour = local.hour.to_numpy() + local.minute.to_numpy() / 60.0
    month_day = local.month.to_numpy() * 100 + local.day.to_numpy()
    return hour, local.dayofweek.to_numpy(float), local.year.to_numpy(np.int64), month_day


def local_calendar(epoch_seconds, timezones) -> LocalCalendar:
    """Local hour, weekday and date of each instant (epoch seconds) in its own zone:
    daylight saving follows each student's zone. One pandas conversion per zone."""
    seconds = np.asarray(epoch_seconds, dtype=np.int64)
    names = np.asarray(timezones, dtype=object)
    if len(seconds) == 1:
        return _one_instant(int(seconds[0]), str(names[0]))
    n = len(seconds)
    out = (np.zeros(n), np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64))
    codes, distinct = pd.factorize(names)
    for code, name in enumerate(distinct):
        rows = np.flatnonzero(codes == code)
        for column, values in zip(out, _fields(seconds[rows], str(name)), strict=True):
            column[rows] = values
    return LocalCalendar(hour=out[0], dow=out[1], year=out[2], month_day=out[3])
