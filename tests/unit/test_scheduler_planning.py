"""Misfire grace and catch-up policies: which ticks a job emits at a given moment (pure, no clock reads)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from dianabot_core.schedule.cron import CronSchedule
from dianabot_core.schedule.jobs import CatchUp, JobDefinition
from schedulers.planning import PlannedTick, ScheduledJob, plan_due

MADRID = ZoneInfo("Europe/Madrid")
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)  # a whole minute
MINUTE = timedelta(minutes=1)


def minutely(
    catch_up: CatchUp = CatchUp.RUN_ONCE, grace_s: float = 30, window_s: float = 86400
) -> ScheduledJob:
    definition = JobDefinition(
        "scheduled_minutely_probe",
        "* * * * *",
        "test",
        misfire_grace_s=grace_s,
        catch_up=catch_up,
        catch_up_window_s=window_s,
    )
    return ScheduledJob(definition, CronSchedule(definition.cron, MADRID))


def test_nothing_is_due_before_the_next_slot() -> None:
    plan = plan_due(minutely(), T0, T0 + timedelta(seconds=59))
    assert plan.ticks == ()
    assert not plan.changed
    assert plan.next_slot == T0 + MINUTE


def test_a_slot_reached_within_the_grace_period_is_on_time() -> None:
    plan = plan_due(minutely(grace_s=30), T0, T0 + MINUTE + timedelta(seconds=29))
    assert plan.ticks == (PlannedTick(T0 + MINUTE, "on_time"),)
    assert plan.last_slot == T0 + MINUTE
    assert plan.next_slot == T0 + 2 * MINUTE


def test_several_late_slots_within_grace_are_all_on_time_and_in_order() -> None:
    job = ScheduledJob(
        JobDefinition("scheduled_secondly_probe", "* * * * * *", "test", misfire_grace_s=10),
        CronSchedule("* * * * * *", MADRID),
    )
    plan = plan_due(job, T0, T0 + timedelta(seconds=4, milliseconds=300))  # e.g. a leader takeover
    assert [t.slot for t in plan.ticks] == [T0 + timedelta(seconds=s) for s in (1, 2, 3, 4)]
    assert {t.kind for t in plan.ticks} == {"on_time"}


def test_a_slot_later_than_the_grace_period_is_a_misfire_handled_by_the_policy() -> None:
    now = T0 + MINUTE + timedelta(seconds=31)
    assert plan_due(minutely(CatchUp.SKIP, grace_s=30), T0, now).ticks == ()
    assert plan_due(minutely(CatchUp.SKIP, grace_s=30), T0, now).skipped == 1
    assert plan_due(minutely(CatchUp.RUN_ONCE, grace_s=30), T0, now).ticks == (
        PlannedTick(T0 + MINUTE, "catch_up"),
    )


DOWNTIME_NOW = T0 + 10 * MINUTE + timedelta(seconds=5)  # slots 1..10 passed; only 10 is within grace


def test_skip_drops_missed_slots_and_keeps_the_on_time_one() -> None:
    plan = plan_due(minutely(CatchUp.SKIP), T0, DOWNTIME_NOW)
    assert plan.ticks == (PlannedTick(T0 + 10 * MINUTE, "on_time"),)
    assert plan.skipped == 9
    assert plan.last_slot == T0 + 10 * MINUTE


def test_run_once_emits_only_the_most_recent_missed_slot() -> None:
    plan = plan_due(minutely(CatchUp.RUN_ONCE), T0, DOWNTIME_NOW)
    assert plan.ticks == (
        PlannedTick(T0 + 9 * MINUTE, "catch_up"),
        PlannedTick(T0 + 10 * MINUTE, "on_time"),
    )
    assert plan.skipped == 8


def test_run_all_emits_every_missed_slot_oldest_first() -> None:
    plan = plan_due(minutely(CatchUp.RUN_ALL), T0, DOWNTIME_NOW)
    assert [t.slot for t in plan.ticks] == [T0 + i * MINUTE for i in range(1, 11)]
    assert [t.kind for t in plan.ticks] == ["catch_up"] * 9 + ["on_time"]
    assert plan.skipped == 0


def test_run_all_is_capped_keeping_the_most_recent_missed_slots() -> None:
    plan = plan_due(minutely(CatchUp.RUN_ALL), T0, DOWNTIME_NOW, max_runs=3)
    assert [t.slot for t in plan.ticks] == [T0 + i * MINUTE for i in (7, 8, 9, 10)]
    assert plan.skipped == 6


@pytest.mark.parametrize("policy", list(CatchUp))
def test_slots_older_than_the_catch_up_window_are_always_dropped(policy: CatchUp) -> None:
    job = minutely(policy, window_s=3 * 60)
    plan = plan_due(job, T0 - timedelta(days=3), T0 + timedelta(seconds=5))
    assert plan.window_cut
    assert all(t.slot > T0 - 3 * MINUTE for t in plan.ticks)
    assert plan.last_slot == T0
    assert plan.next_slot == T0 + MINUTE


def test_a_late_wake_up_never_shifts_the_schedule() -> None:
    job = minutely(CatchUp.RUN_ALL, grace_s=30)
    last = T0
    emitted: list[datetime] = []
    for minute in range(1, 30):
        # Each wake-up is later than the last one (up to 29 s): slots stay on whole minutes.
        now = T0 + minute * MINUTE + timedelta(seconds=minute)
        plan = plan_due(job, last, now)
        emitted += [t.slot for t in plan.ticks]
        last = plan.last_slot
    assert emitted == [T0 + i * MINUTE for i in range(1, 30)]


def test_a_daily_job_down_for_three_days_runs_once_for_the_latest_day() -> None:
    definition = JobDefinition(
        "scheduled_daily_cleanup", "0 3 * * *", "test", misfire_grace_s=7200, catch_up_window_s=7 * 86400
    )
    job = ScheduledJob(definition, CronSchedule(definition.cron, MADRID))
    last = datetime(2026, 5, 1, 1, 0, tzinfo=UTC)  # 1 May 03:00 CEST
    plan = plan_due(job, last, datetime(2026, 5, 4, 12, 0, tzinfo=UTC))
    assert plan.ticks == (PlannedTick(datetime(2026, 5, 4, 1, 0, tzinfo=UTC), "catch_up"),)
    assert plan.skipped == 2
