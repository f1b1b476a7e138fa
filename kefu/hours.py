"""Business hours: is the desk open at a given moment? Pure (the time is passed in).

Opening hours are per weekday in one IANA time zone, "HH:MM-HH:MM" (end exclusive;
"24:00" for midnight; an end before the start spans midnight into the next day),
with closed holiday dates. Routing rows can match ``hours = "open"``/``"closed"``
and a handoff outside hours sends ``[business_hours] offline_message``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


@dataclass(frozen=True)
class Hours:
    enabled: bool
    tz: ZoneInfo
    spans: tuple[tuple[int, int] | None, ...]  # per weekday: (start, end) minutes, or None = closed
    holidays: frozenset[dt.date]
    offline_message: str

    def is_open(self, ts: float) -> bool:
        if not self.enabled:
            return True
        local = dt.datetime.fromtimestamp(ts, self.tz)
        minute = local.hour * 60 + local.minute
        today = self._span(local.date())
        if today is not None:
            start, end = today
            if start < end and start <= minute < end:
                return True
            if end <= start and minute >= start:  # opens today, closes after midnight
                return True
        yday = local.date() - dt.timedelta(days=1)
        prev = self._span(yday)
        if prev is not None and prev[1] <= prev[0] and minute < prev[1]:
            return True
        return False

    def _span(self, day: dt.date) -> tuple[int, int] | None:
        if day in self.holidays:
            return None
        return self.spans[day.weekday()]


def from_config(bh) -> Hours:
    """``[business_hours]`` -> Hours; ValueError names the bad key."""
    try:
        tz = ZoneInfo(bh.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"business_hours.timezone: unknown time zone {bh.timezone!r}") from None
    spans = []
    for d in DAYS:
        v = getattr(bh, d)
        if not v:
            spans.append(None)
            continue
        a, b = v.split("-")
        start, end = _minutes(a), _minutes(b)
        if start == end:
            raise ValueError(f"business_hours.{d}: opening and closing time are the same")
        spans.append((start, end))
    hol = set()
    for i, h in enumerate(bh.holidays):
        try:
            hol.add(dt.date.fromisoformat(h))
        except (TypeError, ValueError):
            raise ValueError(f"business_hours.holidays[{i}]: expected a date \"YYYY-MM-DD\", got {h!r}") from None
    return Hours(bh.enabled, tz, tuple(spans), frozenset(hol), bh.offline_message)
