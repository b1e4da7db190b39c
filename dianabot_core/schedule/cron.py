"""Cron schedules in the bot's timezone, turned into UTC slots with daylight saving handled.

A cron expression is read as local wall-clock time (5 fields, or 6 with seconds last, as croniter
takes them). Slots are UTC instants. Where local time jumps, the rules are those of Vixie cron:

* Jobs pinned to certain hours (the hour field is not ``*``), e.g. ``30 2 * * *``:
  - spring forward: a local time that does not exist (02:30 in Europe/Madrid on the last Sunday
    of March) is **shifted forward by the gap** and fires at 03:30 CEST; if the shifted instant is
    already a slot (``0 2,3 * * *``), it fires once;
  - fall back: a local time that happens twice (02:30 on the last Sunday of October) fires
    **once, at its first occurrence** (CEST).
* Jobs that run every hour or more often (hour field ``*``) follow elapsed time: across spring
  forward nothing is lost or doubled (the missing local hour has no instants), and across fall back
  the repeated hour fires again, because real time passes (a minutely job never pauses for an hour).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

from croniter import croniter

# Offsets change by at most this much around a transition in any real zone (usually 1 h).
_LOOKAROUND = timedelta(hours=3)
_ZERO = timedelta(0)


class CronSchedule:
    """One cron expression in one timezone; iterates its slots as UTC datetimes."""

    def __init__(self, expression: str, tz: ZoneInfo) -> None:
        if not croniter.is_valid(expression):
            raise ValueError(f"not a valid cron expression: {expression!r}")
        self.expression = expression
        self.tz = tz
        hours = croniter.expand(expression)[0][1]
        self._every_hour = hours == ["*"]

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.tz.key!r})"

    def next_after(self, after: datetime) -> datetime:
        """The first slot strictly after ``after``."""
        return next(self.slots_after(after))

    def next_n(self, after: datetime, count: int) -> list[datetime]:
        return list(islice(self.slots_after(after), count))

    def slots_after(self, after: datetime) -> Iterator[datetime]:
        """Every slot strictly after ``after``, in order, forever (one croniter for the whole walk).

        Wall times are walked in order; around a transition their instants can come out of
        order by up to the offset change, so they wait in a small heap until no later wall time
        can produce an earlier instant. Away from transitions each slot is yielded at once.
        """
        after = after.astimezone(UTC)
        back = self._shift_near(after)
        # A wall time a little before `after`'s can still map to a later instant near a transition.
        start = self._wall(after) - (back + timedelta(seconds=1) if back else _ZERO)
        walls = croniter(self.expression, start)
        pending: list[datetime] = []
        last: datetime | None = None
        while True:
            wall: datetime = walls.get_next(datetime)
            for instant in self._instants(wall):
                if instant > after:
                    heapq.heappush(pending, instant)
            # Any later wall time maps to an instant after this bound.
            reference = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
            bound = reference - self._shift_near(reference)
            while pending and pending[0] <= bound:
                slot = heapq.heappop(pending)
                if slot != last:
                    last = slot
                    yield slot

    # --- local time <-> UTC ---------------------------------------------------------------------

    def _wall(self, instant: datetime) -> datetime:
        return instant.astimezone(self.tz).replace(tzinfo=None)

    def _instants(self, wall: datetime) -> tuple[datetime, ...]:
        """The UTC instants a matching wall time stands for, by the rules in the module docstring."""
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        if first == second:
            return (first,)
        if self._wall(first) == wall:  # happens twice (fall back)
            return (first, second) if self._every_hour else (first,)
        # Does not exist (spring forward): fold=0 reads it with the offset before the jump,
        # which is the same wall time shifted forward by the gap.
        return () if self._every_hour else (first,)

    def _shift_near(self, instant: datetime) -> timedelta:
        """How much the UTC offset changes within a few hours of ``instant`` (zero almost always)."""
        here = self._offset(instant)
        return max(
            abs(self._offset(instant - _LOOKAROUND) - here), abs(self._offset(instant + _LOOKAROUND) - here)
        )

    def _offset(self, instant: datetime) -> timedelta:
        return instant.astimezone(self.tz).utcoffset() or _ZERO


def is_valid_cron(expression: str) -> bool:
    return bool(croniter.is_valid(expression))
