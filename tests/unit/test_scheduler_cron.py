"""Cron slots in the bot's timezone, across Europe/Madrid's daylight-saving changes.

2026-03-29: at 02:00 CET clocks jump to 03:00 CEST (02:00-02:59 does not exist).
2026-10-25: at 03:00 CEST clocks go back to 02:00 CET (02:00-02:59 happens twice).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise, takewhile
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from dianabot_core.schedule.cron import CronSchedule
from dianabot_core.schedule.jobs import JOBS, JobDefinition

MADRID = ZoneInfo("Europe/Madrid")
SPRING = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)  # Sunday 29 March, 00:00 local (CET)
AUTUMN = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # Sunday 25 October, 00:00 local (CEST)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def slots(expression: str, start: datetime, hours: float, tz: ZoneInfo = MADRID) -> list[datetime]:
    end = start + timedelta(hours=hours)
    return list(takewhile(lambda t: t <= end, CronSchedule(expression, tz).slots_after(start)))


def local(instant: datetime) -> str:
    return instant.astimezone(MADRID).strftime("%H:%M %Z")


# --- plain time zone arithmetic ------------------------------------------------------------------


def test_a_daily_local_time_moves_in_utc_with_the_season() -> None:
    schedule = CronSchedule("0 9 * * *", MADRID)
    assert schedule.next_after(utc(2026, 1, 15, 12)) == utc(2026, 1, 16, 8)  # 09:00 CET
    assert schedule.next_after(utc(2026, 7, 15, 12)) == utc(2026, 7, 16, 7)  # 09:00 CEST


def test_next_slot_is_strictly_after_and_seconds_fields_work() -> None:
    schedule = CronSchedule("0 9 * * *", MADRID)
    assert schedule.next_after(utc(2026, 1, 16, 8)) == utc(2026, 1, 17, 8)
    every_second = CronSchedule("* * * * * *", MADRID)
    assert every_second.next_n(utc(2026, 1, 1, 0, 0, 0), 3) == [
        utc(2026, 1, 1, 0, 0, 1),
        utc(2026, 1, 1, 0, 0, 2),
        utc(2026, 1, 1, 0, 0, 3),
    ]
    every_15s = CronSchedule("* * * * * */15", MADRID)
    assert every_15s.next_after(datetime(2026, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)) == utc(
        2026, 1, 1, 0, 0, 15
    )


def test_an_invalid_expression_is_refused() -> None:
    with pytest.raises(ValueError, match="not a valid cron expression"):
        CronSchedule("61 * * * *", MADRID)


# --- spring forward ------------------------------------------------------------------------------


def test_spring_forward_shifts_a_missing_local_time_forward_by_the_gap() -> None:
    daily = slots("30 2 * * *", SPRING - timedelta(days=1), 72)
    assert daily == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]
    assert [local(t) for t in daily] == ["02:30 CET", "03:30 CEST", "02:30 CEST"]


def test_spring_forward_a_shifted_slot_that_lands_on_a_slot_fires_once() -> None:
    fired = slots("0,30 2,3 * * *", SPRING, 24)
    assert [local(t) for t in fired] == ["03:00 CEST", "03:30 CEST"]


def test_spring_forward_hourly_jobs_follow_elapsed_time() -> None:
    hourly = slots("0 * * * *", SPRING - timedelta(seconds=1), 23 - 1 / 3600)
    assert len(hourly) == 23  # the local day has 23 hours
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(hourly))
    assert "02:00 CET" not in [local(t) for t in hourly]


def test_spring_forward_minutely_jobs_never_pause() -> None:
    minutely = slots("* * * * *", utc(2026, 3, 29, 0, 0), 2)
    assert len(minutely) == 120
    assert all(b - a == timedelta(minutes=1) for a, b in pairwise(minutely))


# --- fall back -----------------------------------------------------------------------------------


def test_fall_back_a_repeated_local_time_fires_once_at_its_first_occurrence() -> None:
    daily = slots("30 2 * * *", AUTUMN, 24)
    assert daily == [utc(2026, 10, 25, 0, 30)]
    assert local(daily[0]) == "02:30 CEST"


def test_fall_back_hourly_jobs_fire_in_both_passes_of_the_repeated_hour() -> None:
    hourly = slots("0 * * * *", AUTUMN - timedelta(seconds=1), 25 - 1 / 3600)
    assert len(hourly) == 25  # the local day has 25 hours
    assert [local(t) for t in hourly].count("02:00 CEST") == 1
    assert [local(t) for t in hourly].count("02:00 CET") == 1
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(hourly))


def test_fall_back_secondly_jobs_are_contiguous_through_the_change() -> None:
    change = utc(2026, 10, 25, 1, 0)  # 03:00 CEST becomes 02:00 CET
    fired = slots("* * * * * *", change - timedelta(seconds=30), 1 / 60)
    assert fired == [change - timedelta(seconds=29) + timedelta(seconds=i) for i in range(60)]


# --- against a brute-force definition ------------------------------------------------------------


def brute_force(expression: str, start: datetime, hours: int) -> list[datetime]:
    """The rules spelled out minute by minute: the slow, obvious version of CronSchedule."""
    every_hour = croniter.expand(expression)[0][1] == ["*"]
    found: set[datetime] = set()
    for minute in range(1, hours * 60 + 1):
        instant = start + timedelta(minutes=minute)
        wall = instant.astimezone(MADRID)
        second_pass = wall.fold == 1
        if croniter.match(expression, wall.replace(tzinfo=None)) and (every_hour or not second_pass):
            found.add(instant)
    if not every_hour:  # local times that do not exist fire shifted forward by the gap
        for wall_naive in _walls(start, hours):
            shifted = wall_naive.replace(tzinfo=MADRID).astimezone(UTC)
            missing = shifted.astimezone(MADRID).replace(tzinfo=None) != wall_naive
            if (
                missing
                and croniter.match(expression, wall_naive)
                and start < shifted <= start + timedelta(hours=hours)
            ):
                found.add(shifted)
    return sorted(found)


def _walls(start: datetime, hours: int) -> Iterator[datetime]:
    wall = start.astimezone(MADRID).replace(tzinfo=None)
    for minute in range(hours * 60 + 1):
        yield wall + timedelta(minutes=minute)


@pytest.mark.parametrize(
    "day", [SPRING - timedelta(hours=6), AUTUMN - timedelta(hours=6)], ids=["spring", "autumn"]
)
@pytest.mark.parametrize(
    "expression",
    ["* * * * *", "0 * * * *", "15 * * * *", "30 2 * * *", "0,30 2,3 * * *", "*/20 1-3 * * *", "* 2 * * *"],
)
def test_slots_match_the_brute_force_definition(day: datetime, expression: str) -> None:
    assert slots(expression, day, 12) == brute_force(expression, day, 12)


@pytest.mark.parametrize(
    "day", [SPRING - timedelta(hours=2), AUTUMN - timedelta(hours=2)], ids=["spring", "autumn"]
)
def test_next_after_any_instant_is_the_next_slot(day: datetime) -> None:
    expected = brute_force("0,30 * * * *", day, 12)
    schedule = CronSchedule("0,30 * * * *", MADRID)
    for minute in range(0, 8 * 60, 7):
        at = day + timedelta(minutes=minute, seconds=13)
        assert schedule.next_after(at) == next(t for t in expected if t > at)


# --- the job table -------------------------------------------------------------------------------

# frequency -> (a period, how many slots it holds)
FREQUENCIES = {
    "secondly": (timedelta(minutes=1), 60),
    "minutely": (timedelta(hours=1), 60),
    "hourly": (timedelta(days=1), 24),
    "daily": (timedelta(days=7), 7),
    "weekly": (timedelta(days=28), 4),
}


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.name)
def test_every_job_is_named_by_its_frequency_and_fires_that_often(job: JobDefinition) -> None:
    match = re.fullmatch(r"scheduled_(secondly|minutely|hourly|daily|weekly)_[a-z_]+", job.name)
    assert match, job.name
    period, count = FREQUENCIES[match.group(1)]
    start = utc(2026, 1, 4, 23)  # Monday 00:00 local; no daylight-saving change for weeks
    fired = slots(job.cron, start - timedelta(microseconds=1), period.total_seconds() / 3600)
    assert len([t for t in fired if t < start + period]) == count
