"""Operator commands on scheduled jobs: ``dianabot jobs list`` and ``dianabot jobs trigger JOB``
(also ``python -m schedulers list`` and ``python -m schedulers trigger JOB``).

``list`` shows every job of the table: its cron (local time), timezone, whether it is enabled,
its policies, its next fire times, the last slot the scheduler emitted, and its last run (from
``job_runs``). ``trigger`` emits a manual tick now, with a fresh event id (so it is never taken
for a duplicate of a scheduled tick), through the outbox; it is published at once when Kafka is
reachable, else by the scheduler's relay as soon as it is. Both take ``--json``; job names
complete from the job table (``dianabot_core.schedule.jobs``).

Neither sends a message, so neither reads the Telegram settings: ``ToolSettings`` is every
section but that one, and a missing bot token is no error here.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_core.cli.output import Table, stdout_console
from dianabot_core.cli.runner import run_app
from dianabot_core.clock import Clock, SystemClock
from dianabot_core.db import create_engine, create_session_factory
from dianabot_core.jobs import JobRun, SchedulerJobState
from dianabot_core.kafka import create_broker
from dianabot_core.logs import configure_logging
from dianabot_core.outbox import OutboxRelay
from dianabot_core.publisher import EventPublisher
from dianabot_core.schedule.cron import CronSchedule
from dianabot_core.schedule.jobs import JOBS, JobDefinition
from dianabot_core.schedule.settings import SchedulerSettings
from dianabot_core.settings import ConfigError, ToolSettings, load_tool_settings
from schedulers.state import PRODUCER, PgTickStore

Sessions = async_sessionmaker[AsyncSession]


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
    tz: ZoneInfo, scheduler: SchedulerSettings, sessions: Sessions, clock: Clock, count: int = 3
) -> tuple[list[JobStatus], str | None]:
    """Every job with its next fire times and, if the database answers, its last slot and run."""
    now = clock.now()
    last_slots: dict[str, datetime] = {}
    last_runs: dict[str, LastRun] = {}
    problem = None
    try:
        last_slots, last_runs = await _stored(sessions)
    except Exception as error:
        problem = f"database unavailable ({type(error).__name__}): last slots and runs not shown"
    statuses = [
        JobStatus(
            job,
            CronSchedule(job.cron, tz).next_n(now, count),
            last_slots.get(job.name),
            last_runs.get(job.name),
        )
        for job in scheduler.resolve_jobs()
    ]
    return statuses, problem


async def _stored(sessions: Sessions) -> tuple[dict[str, datetime], dict[str, LastRun]]:
    async with sessions() as session:
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


JOB_COLUMNS = ("job", "cron", "on", "catch_up", "grace", "overlap", "next_fire", "last_slot", "last_run")


def jobs_table(statuses: Sequence[JobStatus], tz: ZoneInfo) -> Table:
    rows = []
    for status in statuses:
        job, run = status.job, status.last_run
        rows.append(
            {
                "job": job.name,
                "cron": job.cron,
                "on": "yes" if job.enabled else "no",
                "catch_up": job.catch_up.value,
                "grace": f"{job.misfire_grace_s:g}s",
                "overlap": job.overlap.value,
                "next_fire": _local(status.next_fires[0], tz) if status.next_fires else "-",
                "last_slot": _local(status.last_slot, tz) if status.last_slot else "-",
                "last_run": f"{run.status} {_local(run.started_at, tz)}"
                + (f" ({run.duration_s:.1f}s)" if run.duration_s else "")
                if run
                else "-",
            }
        )
    return Table(rows, JOB_COLUMNS, title=f"timezone: {tz.key}", titles={"catch_up": "CATCH-UP"})


def render_table(statuses: Sequence[JobStatus], tz: ZoneInfo) -> str:
    return jobs_table(statuses, tz).text()


def _local(instant: datetime, tz: ZoneInfo) -> str:
    return instant.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def _sessions(settings: ToolSettings) -> tuple[Any, Sessions]:
    engine = create_engine(settings.database)
    return engine, create_session_factory(engine)


async def list_jobs(
    settings: ToolSettings,
    scheduler: SchedulerSettings,
    as_json: bool,
    count: int,
    console: Console | None = None,
) -> int:
    engine, sessions = _sessions(settings)
    try:
        statuses, problem = await job_statuses(settings.tz, scheduler, sessions, SystemClock(), count)
    finally:
        await engine.dispose()
    if as_json:
        print(json.dumps([s.as_json(settings.tz) for s in statuses], indent=2))
    elif console is not None:
        console.print(jobs_table(statuses, settings.tz).rich())
    else:
        print(render_table(statuses, settings.tz))
    if problem:
        print(problem, file=sys.stderr)
    return 0


async def trigger_job(
    settings: ToolSettings,
    scheduler: SchedulerSettings,
    job: str,
    as_json: bool = False,
    listing: str = "python -m schedulers list",
) -> int:
    if job not in {j.name for j in scheduler.resolve_jobs()}:
        print(f"unknown job {job!r}; see `{listing}`", file=sys.stderr)
        return 2
    engine, sessions = _sessions(settings)
    try:
        envelope = await PgTickStore(sessions, topic=scheduler.tick_topic).trigger(job, SystemClock().now())
        slot, event_id = envelope.payload["slot"], envelope.event_id
        if not as_json:
            print(f"manual tick for {job} at {slot}: event {event_id}", flush=True)
        published = await _publish_ticks(settings, scheduler, sessions)
        if as_json:
            print(json.dumps({"job": job, "slot": slot, "event_id": str(event_id), "published": published}))
        else:
            print("published" if published else "queued in the outbox: the scheduler's relay will publish it")
    finally:
        await engine.dispose()
    return 0


async def _publish_ticks(settings: ToolSettings, scheduler: SchedulerSettings, sessions: Sessions) -> bool:
    broker = create_broker(settings.kafka)
    try:
        await asyncio.wait_for(broker.connect(), settings.kafka.connect_timeout_s)
        relay = OutboxRelay(
            sessions,
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


# --- commands as typed ------------------------------------------------------------------------

app = typer.Typer(help="Scheduled jobs: list, trigger.", no_args_is_help=True, pretty_exceptions_enable=False)


def _settings() -> tuple[ToolSettings, SchedulerSettings]:
    try:
        settings = load_tool_settings()
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise typer.Exit(2) from None
    configure_logging(settings.telemetry.log_level, settings.telemetry.log_json)
    return settings, settings.scheduler


def complete_job(incomplete: str) -> list[str]:
    """Shell completion of job names: the job table's."""
    return [job.name for job in JOBS if job.name.startswith(incomplete)]


AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("list")
def list_command(
    next_fires: Annotated[int, typer.Option("--next", help="How many next fire times (JSON).")] = 3,
    as_json: AsJson = False,
) -> int:
    """Jobs, next fire times, last slots and runs."""
    settings, scheduler = _settings()
    console = None if as_json else stdout_console()
    return asyncio.run(list_jobs(settings, scheduler, as_json, max(1, next_fires), console))


@app.command("trigger")
def trigger_command(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, show_default=False)],
    as_json: AsJson = False,
) -> int:
    """Emit a manual tick for JOB now."""
    settings, scheduler = _settings()
    listing = f"{ctx.parent.command_path} list" if ctx.parent else "list"
    return asyncio.run(trigger_job(settings, scheduler, job, as_json, listing))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m schedulers``: the ``jobs`` commands of ``dianabot``."""
    return int(run_app(app, argv, "python -m schedulers"))
