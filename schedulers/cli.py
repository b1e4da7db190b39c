"""Operator commands: ``python -m schedulers list`` and ``python -m schedulers trigger JOB``.

``list`` shows every job of the table: its cron (local time), timezone, whether it is enabled,
its policies, its next fire times, the last slot the scheduler emitted, and its last run (from
``job_runs``). ``trigger`` emits a manual tick now, with a fresh event id (so it is never taken
for a duplicate of a scheduled tick), through the outbox; it is published at once when Kafka is
reachable, else by the scheduler's relay as soon as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from core.clock import Clock, SystemClock
from core.jobs import JobRun, SchedulerJobState
from core.kafka import create_broker
from core.outbox import OutboxRelay
from core.publisher import EventPublisher
from core.runtime import Resources, build_resources, settings_or_exit
from core.schedule.cron import CronSchedule
from core.schedule.jobs import JobDefinition
from core.schedule.settings import SchedulerSettings
from core.settings import Settings
from schedulers.state import PRODUCER, PgTickStore


@dataclass(frozen=True)
class LastRun:
    status: str
    slot: datetime
    started_at: datetime
    duration_s: float | None
    error: str | None


@dataclass(frozen=True)
class JobStatus:
    job: JobDefinition
    next_fires: list[datetime]
    last_slot: datetime | None
    last_run: LastRun | None

    def as_json(self, tz: ZoneInfo) -> dict[str, Any]:
        run = self.last_run
        return {
            "job": self.job.name,
            "cron": self.job.cron,
            "timezone": tz.key,
            "enabled": self.job.enabled,
            "misfire_grace_s": self.job.misfire_grace_s,
            "catch_up": self.job.catch_up.value,
            "catch_up_window_s": self.job.catch_up_window_s,
            "overlap": self.job.overlap.value,
            "next_fires": [t.astimezone(tz).isoformat() for t in self.next_fires],
            "last_slot": self.last_slot.astimezone(tz).isoformat() if self.last_slot else None,
            "last_run": None
            if run is None
            else {
                "status": run.status,
                "slot": run.slot.astimezone(tz).isoformat(),
                "started_at": run.started_at.astimezone(tz).isoformat(),
                "duration_s": run.duration_s,
                "error": run.error,
            },
        }


async def job_statuses(
    settings: Settings, scheduler: SchedulerSettings, resources: Resources, clock: Clock, count: int = 3
) -> tuple[list[JobStatus], str | None]:
    """Every job with its next fire times and, if the database answers, its last slot and run."""
    now = clock.now()
    last_slots: dict[str, datetime] = {}
    last_runs: dict[str, LastRun] = {}
    problem = None
    try:
        last_slots, last_runs = await _stored(resources)
    except Exception as error:
        problem = f"database unavailable ({type(error).__name__}): last slots and runs not shown"
    statuses = [
        JobStatus(
            job,
            CronSchedule(job.cron, settings.tz).next_n(now, count),
            last_slots.get(job.name),
            last_runs.get(job.name),
        )
        for job in scheduler.resolve_jobs()
    ]
    return statuses, problem


async def _stored(resources: Resources) -> tuple[dict[str, datetime], dict[str, LastRun]]:
    async with resources.session_factory() as session:
        state = await session.execute(select(SchedulerJobState.job, SchedulerJobState.last_slot))
        slots = {job: last_slot for job, last_slot in state}
        rows = await session.execute(
            select(JobRun.job, JobRun.status, JobRun.slot, JobRun.started_at, JobRun.duration_s, JobRun.error)
            .distinct(JobRun.job)
            .order_by(JobRun.job, JobRun.started_at.desc())
        )
        runs = {
            job: LastRun(str(status), slot, at, duration, error)
            for job, status, slot, at, duration, error in rows
        }
    return slots, runs


def render_table(statuses: Sequence[JobStatus], tz: ZoneInfo) -> str:
    header = ("JOB", "CRON", "ON", "CATCH-UP", "GRACE", "OVERLAP", "NEXT FIRE", "LAST SLOT", "LAST RUN")
    rows = [header]
    for status in statuses:
        job, run = status.job, status.last_run
        rows.append(
            (
                job.name,
                job.cron,
                "yes" if job.enabled else "no",
                job.catch_up.value,
                f"{job.misfire_grace_s:g}s",
                job.overlap.value,
                _local(status.next_fires[0], tz) if status.next_fires else "-",
                _local(status.last_slot, tz) if status.last_slot else "-",
                f"{run.status} {_local(run.started_at, tz)}"
                + (f" ({run.duration_s:.1f}s)" if run.duration_s else "")
                if run
                else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join([f"timezone: {tz.key}", *lines])


def _local(instant: datetime, tz: ZoneInfo) -> str:
    return instant.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


async def list_jobs(settings: Settings, scheduler: SchedulerSettings, as_json: bool, count: int) -> int:
    resources = build_resources(settings)
    try:
        statuses, problem = await job_statuses(settings, scheduler, resources, SystemClock(), count)
    finally:
        await resources.engine.dispose()
    if as_json:
        print(json.dumps([s.as_json(settings.tz) for s in statuses], indent=2))
    else:
        print(render_table(statuses, settings.tz))
    if problem:
        print(problem, file=sys.stderr)
    return 0


async def trigger_job(settings: Settings, scheduler: SchedulerSettings, job: str) -> int:
    if job not in {j.name for j in scheduler.resolve_jobs()}:
        print(f"unknown job {job!r}; see `python -m schedulers list`", file=sys.stderr)
        return 2
    resources = build_resources(settings)
    try:
        envelope = await PgTickStore(resources.session_factory, topic=scheduler.tick_topic).trigger(
            job, SystemClock().now()
        )
        print(f"manual tick for {job} at {envelope.payload['slot']}: event {envelope.event_id}")
        published = await _publish_ticks(settings, scheduler, resources)
        print("published" if published else "queued in the outbox: the scheduler's relay will publish it")
    finally:
        await resources.engine.dispose()
    return 0


async def _publish_ticks(settings: Settings, scheduler: SchedulerSettings, resources: Resources) -> bool:
    broker = create_broker(settings.kafka)
    try:
        await asyncio.wait_for(broker.connect(), settings.kafka.connect_timeout_s)
        relay = OutboxRelay(
            resources.session_factory,
            EventPublisher(broker, PRODUCER),
            topics={scheduler.tick_topic},
            ack_timeout_s=settings.kafka.connect_timeout_s,
        )
        await relay.relay_once()
    except Exception:
        return False
    finally:
        await broker.stop()
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m schedulers", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="jobs, next fire times, last slots and runs")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument("--next", type=int, default=3, help="how many next fire times (JSON)")
    trigger = commands.add_parser("trigger", help="emit a manual tick for JOB now")
    trigger.add_argument("job")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_or_exit()
    if args.command == "list":
        return asyncio.run(list_jobs(settings, settings.scheduler, args.json, max(1, args.next)))
    return asyncio.run(trigger_job(settings, settings.scheduler, args.job))
