"""next_occurrence without a database: daily, weekly and monthly steps, month ends, DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from dianabot_core.domain.content import next_occurrence
from dianabot_core.models import ChannelPost, Recurrence

MADRID = ZoneInfo("Europe/Madrid")


def _post(at: datetime, recurrence: Recurrence | None) -> ChannelPost:
    return ChannelPost(scheduled_for=at, recurrence=recurrence)


@pytest.mark.parametrize(
    ("recurrence", "at", "expected"),
    [
        (Recurrence.DAILY, datetime(2026, 2, 28, 9, tzinfo=UTC), datetime(2026, 3, 1, 9, tzinfo=UTC)),
        (Recurrence.WEEKLY, datetime(2026, 12, 29, 9, tzinfo=UTC), datetime(2027, 1, 5, 9, tzinfo=UTC)),
        (Recurrence.MONTHLY, datetime(2026, 1, 15, 9, tzinfo=UTC), datetime(2026, 2, 15, 9, tzinfo=UTC)),
        (Recurrence.MONTHLY, datetime(2026, 12, 31, 9, tzinfo=UTC), datetime(2027, 1, 31, 9, tzinfo=UTC)),
        (Recurrence.MONTHLY, datetime(2026, 1, 31, 9, tzinfo=UTC), datetime(2026, 2, 28, 9, tzinfo=UTC)),
        (Recurrence.MONTHLY, datetime(2028, 1, 31, 9, tzinfo=UTC), datetime(2028, 2, 29, 9, tzinfo=UTC)),
        (Recurrence.MONTHLY, datetime(2026, 3, 31, 9, tzinfo=UTC), datetime(2026, 4, 30, 9, tzinfo=UTC)),
    ],
)
def test_the_next_slot_follows_the_posts_own_slot(
    recurrence: Recurrence, at: datetime, expected: datetime
) -> None:
    assert next_occurrence(_post(at, recurrence)) == expected


def test_a_monthly_series_keeps_its_day_after_a_clamped_month() -> None:
    february = _post(datetime(2026, 2, 28, 9, tzinfo=UTC), Recurrence.MONTHLY)

    assert next_occurrence(february, day_of_month=31) == datetime(2026, 3, 31, 9, tzinfo=UTC)
    assert next_occurrence(february, day_of_month=30) == datetime(2026, 3, 30, 9, tzinfo=UTC)
    assert next_occurrence(february) == datetime(2026, 3, 28, 9, tzinfo=UTC)


def test_steps_are_wall_clock_steps_in_the_bots_timezone() -> None:
    # 09:00 in Madrid is 08:00 UTC before the change on 2026-03-29 and 07:00 UTC after it.
    before_dst = _post(datetime(2026, 3, 28, 8, tzinfo=UTC), Recurrence.DAILY)

    assert next_occurrence(before_dst, tz=MADRID) == datetime(2026, 3, 29, 7, tzinfo=UTC)
    assert next_occurrence(before_dst) == datetime(2026, 3, 29, 8, tzinfo=UTC)


def test_a_month_end_in_local_time_is_clamped_in_local_time() -> None:
    # 2026-01-31 00:30 in Madrid is still January 30th in UTC.
    local_month_end = _post(datetime(2026, 1, 30, 23, 30, tzinfo=UTC), Recurrence.MONTHLY)

    following = next_occurrence(local_month_end, tz=MADRID)

    assert following is not None
    assert following.astimezone(MADRID) == datetime(2026, 2, 28, 0, 30, tzinfo=MADRID)


def test_a_one_off_post_has_no_next_slot() -> None:
    assert next_occurrence(_post(datetime(2026, 1, 1, tzinfo=UTC), None)) is None
