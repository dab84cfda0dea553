"""What every flow shares: parsing "as of" moments and timing its steps."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fsp.errors import InvalidInput


def parse_moment(value: str | datetime | None, name: str = "--now") -> datetime:
    """An aware UTC datetime from ISO 8601 text (offset required), a datetime, or the clock."""
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidInput(
                f"{name}: {value!r} is not an ISO 8601 time, e.g. 2026-11-01T12:00:00+00:00"
            ) from exc
    if moment.tzinfo is None:
        raise InvalidInput(f"{name}: {value!r} has no UTC offset; add one, e.g. +00:00")
    return moment.astimezone(UTC)


class Laps:
    """Seconds spent on each step of a flow, measured one after the other."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, step: str) -> None:
        """Record the time since the previous lap (or the start) as `step`."""
        now = time.perf_counter()
        self.seconds[step] = round(now - self._mark, 2)
        self._mark = now
