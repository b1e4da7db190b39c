"""Periodic jobs on the consumer side: each job is a handler of ``scheduler.tick`` in its own group.

A domain module declares a job function; the wrapper does the bookkeeping every job needs::

    from consumers.jobs import jobs

    @jobs.scheduled("scheduled_daily_cleanup", timeout_s=900)
    async def scheduled_daily_cleanup(tick: SchedulerTick, ctx: HandlerContext[Services]) -> dict[str, int]:
        ...
        return {"rows_deleted": n}

Each job gets its consumer group ``dianabot.jobs.{job}`` (its own offsets, retries and ledger),
sees every tick and acts on its own job's only. Per tick the wrapper: applies the job's overlap
policy (skip while an earlier run is still running); records the run in ``job_runs`` (started,
then finished with its counts and duration, or failed with the error); emits ``job.completed``
(with the job's effects, through the outbox) or ``job.failed`` (on its own, since the handler's
transaction is rolled back) and re-raises, so the pipeline retries or dead-letters the tick.
Duplicate ticks never reach the job: the pipeline's ledger drops them by event id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.services import Services
from dianabot_contracts.events import JobCompleted, JobFailed, SchedulerTick
from dianabot_contracts.ids import derived_event_id
from dianabot_contracts.topics import TopicSpec
from dianabot_core.db import delete_batch
from dianabot_core.domain.subscriptions import purge_expired_invite_links_before
from dianabot_core.jobs import (
    JobRun,
    Overlap,
    RunKey,
    begin_run,
    fail_run,
    finish_run,
    skip_run,
)
from dianabot_core.models import OutboxEvent
from dianabot_core.outbox import add_to_outbox
from dianabot_core.pipeline import dead_letters, ledger
from dianabot_core.pipeline.errors import describe
from dianabot_core.pipeline.handlers import DEFAULT_RETRY_DELAYS_S, PRODUCER, HandlerContext, HandlerGroup
from dianabot_core.schedule.jobs import JOBS_BY_NAME
from dianabot_core.telegram.retention import purge_recipients_before, purge_sends_before

logger = logging.getLogger("dianabot.jobs")

# Time the bookkeeping around a job may take on top of the job's own time limit.
BOOKKEEPING_S = 30.0

# A job function may ask for any services type, like any handler (``HandlerContext[Services]`` here).
JobFunc = Callable[[SchedulerTick, HandlerContext[Any]], Awaitable[Mapping[str, int] | None]]


class JobRunner:
    """The handler registered for one job: overlap policy, run recording, result events."""

    def __init__(
        self, job: str, func: JobFunc, *, overlap: Overlap, timeout_s: float, stale_after: timedelta
    ) -> None:
        self.job = job
        self.func = func
        self.overlap = overlap
        self.timeout_s = timeout_s
        self.stale_after = stale_after

    async def __call__(self, tick: SchedulerTick, ctx: HandlerContext[Any]) -> None:
        if tick.job != self.job:
            return
        run = RunKey(self.job, ctx.envelope.event_id, tick.slot, tick.kind, ctx.attempt)
        side = ctx.transactions()
        now = ctx.clock.now()
        blocker = await begin_run(
            ctx.session, side, run, now=now, overlap=self.overlap, stale_after=self.stale_after
        )
        if blocker is not None:
            logger.info("job %s: tick for %s skipped, an earlier run is still running", self.job, tick.slot)
            await skip_run(ctx.session, run, now=now, blocker=blocker)
            return
        started = ctx.clock.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                counts = dict(await self.func(tick, ctx) or {})
        except Exception as error:
            await self._record_failure(side, run, ctx, ctx.clock.monotonic() - started, error)
            raise
        duration = ctx.clock.monotonic() - started
        await finish_run(ctx.session, run, now=ctx.clock.now(), duration_s=duration, counts=counts)
        await ctx.emit(JobCompleted(job=self.job, slot=tick.slot, duration_s=duration, counts=counts))

    async def _record_failure(
        self,
        side: async_sessionmaker[AsyncSession],
        run: RunKey,
        ctx: HandlerContext[Any],
        duration: float,
        error: Exception,
    ) -> None:
        reason = f"{type(error).__name__}: {describe(error, 1000)}"
        # One job.failed per attempt, even when a batch falls back to one-by-one and fails twice.
        event_id = derived_event_id("job.failed", run.event_id, run.attempt)
        async with side() as session, session.begin():
            await fail_run(session, run, now=ctx.clock.now(), duration_s=duration, error=reason)
            if await session.scalar(select(OutboxEvent.id).where(OutboxEvent.event_id == event_id)) is None:
                await add_to_outbox(
                    session,
                    JobFailed(
                        job=self.job,
                        slot=run.slot,
                        error_type=type(error).__name__,
                        error_message=describe(error, 500),
                    ),
                    producer=PRODUCER,
                    caused_by=ctx.envelope,
                    event_id=event_id,
                )


class ScheduledJobs:
    """Registers job functions on a HandlerGroup (``@jobs.scheduled(name)``)."""

    def __init__(self, group: HandlerGroup) -> None:
        self.group = group
        self.registered: dict[str, JobRunner] = {}

    def scheduled(
        self,
        job: str,
        *,
        timeout_s: float = 300.0,
        overlap: Overlap | None = None,
        retry_delays_s: tuple[float, ...] = DEFAULT_RETRY_DELAYS_S,
        batch_size: int = 20,
        topics: tuple[TopicSpec, ...] = (),
    ) -> Callable[[JobFunc], JobFunc]:
        """Run the decorated function for every tick of ``job`` (named in ``dianabot_core/schedule/jobs.py``).

        ``overlap`` defaults to the job table's policy. A run still ``started`` after
        ``timeout_s`` plus the bookkeeping margin is presumed dead and blocks nothing.
        ``topics`` overrides the tick topic (tests, benchmarks).
        """
        definition = JOBS_BY_NAME.get(job)
        if definition is None:
            raise ValueError(f"{job!r} is not in the job table (dianabot_core/schedule/jobs.py)")
        if job in self.registered:
            raise ValueError(f"job {job!r} already has a handler")

        def register(func: JobFunc) -> JobFunc:
            runner = JobRunner(
                job,
                func,
                overlap=overlap or definition.overlap,
                timeout_s=timeout_s,
                stale_after=timedelta(seconds=timeout_s + 2 * BOOKKEEPING_S),
            )
            self.registered[job] = runner
            self.group.handler(
                SchedulerTick,
                action=job,
                timeout_s=timeout_s + BOOKKEEPING_S,
                retry_delays_s=retry_delays_s,
                batch_size=batch_size,
                topics=topics,
            )(runner)
            return func

        return register


handlers = HandlerGroup("jobs")
jobs = ScheduledJobs(handlers)


# --- scheduled_daily_cleanup ---------------------------------------------------------------------


async def purge_published_outbox_before(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Delete one bounded batch of outbox rows published before ``cutoff``; call until it returns 0."""
    return await delete_batch(
        session, OutboxEvent.id, where=OutboxEvent.published_at < cutoff, batch_size=batch_size
    )


async def purge_job_runs_before(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Delete one bounded batch of job runs that ended before ``cutoff``."""
    return await delete_batch(session, JobRun.id, where=JobRun.finished_at < cutoff, batch_size=batch_size)


# One bounded batch of a purge: (session, cutoff, batch size) -> rows deleted.
PurgeStep = Callable[[AsyncSession, datetime, int], Awaitable[int]]


@jobs.scheduled("scheduled_daily_cleanup", timeout_s=900)
async def scheduled_daily_cleanup(tick: SchedulerTick, ctx: HandlerContext[Services]) -> dict[str, int]:
    """Purge bookkeeping rows past their retention (counted back from the slot), table by table."""
    retention = ctx.services.retention
    purges: dict[str, tuple[PurgeStep, timedelta]] = {
        "processed_events_deleted": (ledger.purge_processed_before, retention.processed_events),
        "outbox_rows_deleted": (purge_published_outbox_before, retention.published_outbox),
        "job_runs_deleted": (purge_job_runs_before, retention.job_runs),
        "telegram_sends_deleted": (purge_sends_before, retention.telegram_sends),
        "broadcast_recipients_deleted": (purge_recipients_before, retention.broadcast_recipients),
        "invite_links_deleted": (purge_expired_invite_links_before, retention.expired_invite_links),
        "dead_letter_claims_deleted": (dead_letters.purge_published_before, retention.dead_letter_claims),
    }
    return {
        count: await ctx.in_batches(
            functools.partial(_purge, purge, tick.slot - keep),
            batch_size=retention.batch_size,
            max_batches=retention.max_batches,
        )
        for count, (purge, keep) in purges.items()
    }


async def _purge(purge: PurgeStep, cutoff: datetime, session: AsyncSession, limit: int) -> int:
    return await purge(session, cutoff, limit)
