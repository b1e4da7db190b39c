"""The leader's loop on an injected clock: no drift, exactly-once slots, restart after downtime."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from dianabot_core.schedule.cron import CronSchedule
from dianabot_core.schedule.jobs import CatchUp, JobDefinition
from schedulers.leader import LeadershipLost
from schedulers.planning import PlannedTick, ScheduledJob
from schedulers.state import tick_event_id
from schedulers.ticker import Ticker

MADRID = ZoneInfo("Europe/Madrid")
START = datetime(2026, 5, 4, 10, 0, 0, 250_000, tzinfo=UTC)


@dataclass
class FakeClock:
    """Time that moves only when the code sleeps; each wake-up may be late by up to `oversleep_s`."""

    at: datetime
    oversleep_s: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    wakeups: int = 0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.at.timestamp()

    async def sleep_until(self, when: datetime) -> None:
        if when > self.at:
            late = timedelta(seconds=self.rng.uniform(0, self.oversleep_s))
            self.at = when + late
        self.wakeups += 1
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Emitted:
    job: str
    slot: datetime
    kind: str
    event_id: UUID
    at: datetime


@dataclass
class MemoryStore:
    """The TickStore contract in memory: compare-and-set cursor, one event per derived id."""

    clock: FakeClock
    state: dict[str, datetime] = field(default_factory=dict)
    emitted: list[Emitted] = field(default_factory=list)

    async def load(self, initial: Mapping[str, datetime]) -> dict[str, datetime]:
        for job, slot in initial.items():
            self.state.setdefault(job, slot)
        return {job: self.state[job] for job in initial}

    async def advance(
        self, job: str, expected: datetime, last_slot: datetime, ticks: Sequence[PlannedTick]
    ) -> bool:
        if self.state[job] != expected:
            return False
        self.state[job] = last_slot
        seen = {e.event_id for e in self.emitted}
        for tick in ticks:
            event_id = tick_event_id(job, tick.slot)
            if event_id not in seen:
                self.emitted.append(Emitted(job, tick.slot, tick.kind, event_id, self.clock.now()))
        return True


def job(name: str, cron: str, *, grace_s: float = 10, catch_up: CatchUp = CatchUp.RUN_ALL) -> ScheduledJob:
    definition = JobDefinition(name, cron, "test", misfire_grace_s=grace_s, catch_up=catch_up)
    return ScheduledJob(definition, CronSchedule(cron, MADRID))


SECONDLY = job("scheduled_secondly_probe", "* * * * * *")
MINUTELY = job("scheduled_minutely_probe", "* * * * *", grace_s=30, catch_up=CatchUp.RUN_ONCE)


async def run_for(ticker: Ticker, clock: FakeClock, seconds: float) -> None:
    """Lead until the fake clock passes `seconds` from now."""
    stop = asyncio.Event()
    end = clock.now() + timedelta(seconds=seconds)

    async def check() -> None:
        if clock.now() >= end:
            stop.set()

    await ticker.lead(stop, check, check_interval_s=0.5)


async def test_slots_never_drift_though_every_wake_up_is_late() -> None:
    clock = FakeClock(START, oversleep_s=0.4)
    store = MemoryStore(clock)
    await run_for(Ticker([SECONDLY, MINUTELY], store, clock), clock, 600)

    seconds = [e for e in store.emitted if e.job == SECONDLY.name]
    first = START.replace(microsecond=0) + timedelta(seconds=1)
    assert [e.slot for e in seconds] == [first + timedelta(seconds=i) for i in range(len(seconds))]
    assert len(seconds) >= 599
    assert all(timedelta(0) <= e.at - e.slot <= timedelta(seconds=0.4) for e in seconds)
    assert {e.kind for e in seconds} == {"on_time"}
    minutes = [e.slot for e in store.emitted if e.job == MINUTELY.name]
    assert minutes == [datetime(2026, 5, 4, 10, m, tzinfo=UTC) for m in range(1, 11)]


async def test_a_standby_that_takes_over_continues_from_the_stored_slot_without_duplicates() -> None:
    clock = FakeClock(START)
    store = MemoryStore(clock)
    await run_for(Ticker([SECONDLY], store, clock), clock, 30)
    clock.at += timedelta(seconds=4.5)  # the leader died; the standby wins the lock 4.5 s later
    await run_for(Ticker([SECONDLY], store, clock), clock, 30)

    slots = [e.slot for e in store.emitted]
    assert len(slots) == len(set(slots))
    assert slots == [slots[0] + timedelta(seconds=i) for i in range(len(slots))]
    assert {e.kind for e in store.emitted} == {"on_time"}  # 4.5 s is within the 10 s grace
    assert max(e.at - e.slot for e in store.emitted) >= timedelta(seconds=4)


async def test_two_leaders_at_once_still_emit_each_slot_once() -> None:
    clock = FakeClock(START)
    store = MemoryStore(clock)
    first, second = Ticker([SECONDLY], store, clock), Ticker([SECONDLY], store, clock)
    await first.load()
    await second.load()
    for _ in range(20):
        clock.at += timedelta(seconds=1)
        await first.emit_due()
        await second.emit_due()  # its cursor is stale: the compare-and-set refuses, it reloads
    slots = [e.slot for e in store.emitted]
    assert len(slots) == 20
    assert len(set(slots)) == 20


@pytest.mark.parametrize(
    ("policy", "expected_catch_up"), [(CatchUp.SKIP, 0), (CatchUp.RUN_ONCE, 1), (CatchUp.RUN_ALL, 9)]
)
async def test_a_restart_after_downtime_applies_the_catch_up_policy(
    policy: CatchUp, expected_catch_up: int
) -> None:
    probe = job("scheduled_minutely_probe", "* * * * *", grace_s=30, catch_up=policy)
    clock = FakeClock(START)
    store = MemoryStore(clock)
    await run_for(Ticker([probe], store, clock), clock, 150)  # slots 10:01 and 10:02
    clock.at = datetime(2026, 5, 4, 10, 12, 10, tzinfo=UTC)  # down from 10:02:30 to 10:12:10
    await run_for(Ticker([probe], store, clock), clock, 60)

    kinds = [(e.slot.strftime("%H:%M"), e.kind) for e in store.emitted]
    catch_up = [slot for slot, kind in kinds if kind == "catch_up"]
    assert len(catch_up) == expected_catch_up
    assert catch_up == [f"10:{m:02d}" for m in range(12 - expected_catch_up, 12)]  # the most recent ones
    assert ("10:12", "on_time") in kinds  # 10 s late: within grace
    assert ("10:13", "on_time") in kinds
    assert len({slot for slot, _ in kinds}) == len(kinds)


async def test_leading_stops_when_the_lock_is_lost() -> None:
    clock = FakeClock(START)

    async def lost() -> None:
        raise LeadershipLost("lock connection lost")

    with pytest.raises(LeadershipLost):
        await Ticker([SECONDLY], MemoryStore(clock), clock).lead(asyncio.Event(), lost, check_interval_s=1)
