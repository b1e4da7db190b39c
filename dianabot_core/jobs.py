"""Periodic jobs' state in PostgreSQL: the scheduler's last emitted slots, and the runs of each job.

``scheduler_job_state`` holds, per job, the last slot the scheduler emitted a tick for (or decided
to skip), so a restart or a new leader neither repeats nor loses slots.

``job_runs`` holds one row per tick a job handled: ``started`` when it begins (committed at once,
in its own short transaction, so other consumers see it), then ``finished`` in the handler's own
transaction (so "finished" is true exactly when the job's effects committed), ``failed`` in a
separate transaction (the handler's is rolled back), or ``skipped`` when the overlap policy said
so. The overlap policy and monitoring (``python -m schedulers list``) read it.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Float, Index, Integer, String, Text, func, select, text, update
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from dianabot_core.model_base import Base, string_enum

# The two-key advisory lock space of job-run bookkeeping (b"JOBS"), apart from single-key locks.
JOB_LOCK_SPACE = 0x4A4F4253


class Overlap(enum.StrEnum):
    """What a tick does while an earlier run of the same job is still running."""

    SKIP = "skip"
    ALLOW = "allow"


class JobRunStatus(enum.StrEnum):
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    SKIPPED = "skipped"


class SchedulerJobState(Base):
    """The last slot the scheduler dealt with per job; advanced in the transaction that emits its ticks."""

    __tablename__ = "scheduler_job_state"

    job: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_slot: Mapped[datetime]
    # host:pid of the scheduler replica that last advanced it (which leader emitted what).
    emitted_by: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class JobRun(Base):
    """One run of a periodic job: the handling of one tick (retries update the same row)."""

    __tablename__ = "job_runs"
    __table_args__ = (
        Index("ix_job_runs_job_started_at", "job", "started_at"),
        Index("ix_job_runs_started", "job", postgresql_where=text("status = 'started'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    job: Mapped[str] = mapped_column(String(128))
    slot: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[JobRunStatus] = mapped_column(string_enum(JobRunStatus, "job_run_status"))
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)


@dataclass(frozen=True)
class RunKey:
    """Which run: the job, the tick's event id (one run per tick), its slot and kind, the attempt."""

    job: str
    event_id: uuid.UUID
    slot: datetime
    kind: str
    attempt: int = 0


@dataclass(frozen=True)
class RunView:
    """What the overlap policy looks at in another run of the same job."""

    event_id: uuid.UUID
    slot: datetime
    status: JobRunStatus
    started_at: datetime
    finished_at: datetime | None


def blocking_run(
    others: Iterable[RunView], slot: datetime, now: datetime, stale_after: timedelta
) -> RunView | None:
    """The earlier run that was still running when ``slot`` came due, if any.

    A run blocks a slot when it had started by then and had not finished by then (or is still
    running). Ticks that queued up behind a long run are therefore skipped too, as cron would
    have skipped them. A run ``started`` longer than ``stale_after`` ago is presumed dead (its
    process crashed; its own tick will be redelivered) and blocks nothing.
    """
    for run in others:
        if run.status is JobRunStatus.SKIPPED or run.started_at > slot:
            continue
        if run.finished_at is not None:
            if run.finished_at > slot:
                return run
        elif run.status is JobRunStatus.STARTED and now - run.started_at < stale_after:
            return run
    return None


async def begin_run(
    session: AsyncSession,
    side: async_sessionmaker[AsyncSession],
    run: RunKey,
    *,
    now: datetime,
    overlap: Overlap,
    stale_after: timedelta,
) -> RunView | None:
    """Record ``run`` as started, committed at once; or return the run that blocks it (overlap skip).

    ``session`` is the handler's transaction: it also sees runs this transaction finished but
    has not committed yet (a batch of ticks handled together). The check and the insert happen
    under a per-job advisory lock, so two consumers can never both start overlapping runs.
    """
    async with side() as bookkeeping, bookkeeping.begin():
        await bookkeeping.execute(select(func.pg_advisory_xact_lock(JOB_LOCK_SPACE, func.hashtext(run.job))))
        if overlap is Overlap.SKIP:
            blocker = blocking_run(await _other_runs(session, run), run.slot, now, stale_after)
            if blocker is not None:
                return blocker
        await bookkeeping.execute(_upsert(run, JobRunStatus.STARTED, started_at=now))
    return None


async def _other_runs(session: AsyncSession, run: RunKey) -> list[RunView]:
    rows = await session.execute(
        select(JobRun.event_id, JobRun.slot, JobRun.status, JobRun.started_at, JobRun.finished_at)
        .where(
            JobRun.job == run.job,
            JobRun.event_id != run.event_id,
            JobRun.status != JobRunStatus.SKIPPED,
            JobRun.started_at <= run.slot,
            (JobRun.finished_at.is_(None)) | (JobRun.finished_at > run.slot),
        )
        .order_by(JobRun.started_at.desc())
        .limit(20)
    )
    return [RunView(*row) for row in rows]


def _upsert(run: RunKey, status: JobRunStatus, **values: Any) -> Any:
    row = {
        "event_id": run.event_id,
        "job": run.job,
        "slot": run.slot,
        "kind": run.kind,
        "status": status,
        "attempt": run.attempt,
        "finished_at": None,
        "duration_s": None,
        "error": None,
        **values,
    }
    statement = insert(JobRun).values(**row)
    changed = {k: statement.excluded[k] for k in row if k not in ("event_id", "job")}
    return statement.on_conflict_do_update(index_elements=[JobRun.event_id], set_=changed)


async def finish_run(
    session: AsyncSession, run: RunKey, *, now: datetime, duration_s: float, counts: Mapping[str, int]
) -> None:
    """Mark the run finished in the handler's transaction: it commits with the job's effects."""
    await session.execute(
        update(JobRun)
        .where(JobRun.event_id == run.event_id)
        .values(status=JobRunStatus.FINISHED, finished_at=now, duration_s=duration_s, counts=dict(counts))
    )


async def fail_run(
    session: AsyncSession, run: RunKey, *, now: datetime, duration_s: float, error: str
) -> None:
    """Mark the run failed; called in a transaction of its own, since the handler's is rolled back."""
    await session.execute(
        update(JobRun)
        .where(JobRun.event_id == run.event_id)
        .values(status=JobRunStatus.FAILED, finished_at=now, duration_s=duration_s, error=error)
    )


async def skip_run(session: AsyncSession, run: RunKey, *, now: datetime, blocker: RunView) -> None:
    """Record a tick the overlap policy skipped, naming the run that was still going."""
    reason = f"overlap: run of slot {blocker.slot.isoformat()} ({blocker.event_id}) still running"
    await session.execute(_upsert(run, JobRunStatus.SKIPPED, started_at=now, finished_at=now, error=reason))
