"""Deciding which ticks a job emits now: on-time slots, misfires and the catch-up policy (pure, no I/O)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from dianabot_core.schedule.cron import CronSchedule
from dianabot_core.schedule.jobs import CatchUp, JobDefinition

TickKind = Literal["on_time", "catch_up", "manual"]


@dataclass(frozen=True)
class PlannedTick:
    slot: datetime
    kind: TickKind


@dataclass(frozen=True)
class Plan:
    """What to emit for one job, and where its schedule stands afterwards."""

    ticks: tuple[PlannedTick, ...]
    # Missed slots not emitted (policy, or the max_runs cap); slots before the catch-up window
    # are not counted, only flagged by `window_cut`.
    skipped: int
    window_cut: bool
    # The last slot dealt with (emitted or skipped); the job's stored cursor moves here.
    last_slot: datetime
    # The first slot after `now`: when the scheduler has to wake for this job next.
    next_slot: datetime

    @property
    def changed(self) -> bool:
        return bool(self.ticks) or self.skipped > 0 or self.window_cut


@dataclass(frozen=True)
class ScheduledJob:
    """A job of the table with its schedule evaluated in the bot's timezone."""

    definition: JobDefinition
    schedule: CronSchedule

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.definition.misfire_grace_s)

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.definition.catch_up_window_s)


def initial_cursor(job: ScheduledJob, now: datetime) -> datetime:
    """Where a job with no stored state starts: its first slot is the next one (no history is replayed)."""
    return now


def plan_due(job: ScheduledJob, last_slot: datetime, now: datetime, max_runs: int = 1000) -> Plan:
    """The ticks due for slots in (last_slot, now].

    A slot at most ``misfire_grace_s`` late is emitted ``on_time``. Later slots are missed:
    ``skip`` drops them, ``run_once`` emits the most recent one as ``catch_up``, ``run_all`` emits
    them all as ``catch_up`` (at most ``max_runs``, the most recent). Slots older than the
    catch-up window are always dropped. Each next slot is computed from the previous slot, never
    from ``now``, so a late wake-up delays ticks but never shifts the schedule.
    """
    window_start = now - job.window
    cursor = max(last_slot, window_start)
    missed: deque[datetime] = deque(maxlen=max_runs)
    missed_count = 0
    on_time: list[datetime] = []
    slots = job.schedule.slots_after(cursor)
    slot = next(slots)
    last = last_slot
    while slot <= now:
        if now - slot > job.grace:
            missed.append(slot)
            missed_count += 1
        else:
            on_time.append(slot)
        last = slot
        slot = next(slots)
    catch_up = _catch_up(job.definition.catch_up, missed)
    ticks = [PlannedTick(s, "catch_up") for s in catch_up] + [PlannedTick(s, "on_time") for s in on_time]
    return Plan(
        ticks=tuple(ticks),
        skipped=missed_count - len(catch_up),
        window_cut=cursor > last_slot and job.schedule.next_after(last_slot) <= cursor,
        last_slot=max(last, cursor),
        next_slot=slot,
    )


def _catch_up(policy: CatchUp, missed: deque[datetime]) -> list[datetime]:
    if policy is CatchUp.RUN_ALL:
        return list(missed)
    if policy is CatchUp.RUN_ONCE and missed:
        return [missed[-1]]
    return []
