"""Job handlers on the real pipeline: run records, overlap policy, failures, duplicates, the cleanup job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.app import build_consumers
from consumers.jobs import ScheduledJobs, scheduled_daily_cleanup
from consumers.services import Retention, Services
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import SchedulerTick
from dianabot_contracts.ids import derived_event_id
from dianabot_contracts.topics import TopicSpec
from dianabot_core.jobs import JobRun, JobRunStatus, Overlap
from dianabot_core.models import OutboxEvent
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.settings import Settings
from tests.integration.pipeline_support import RawProducer, dead_letters_for


@pytest.fixture
def topic() -> TopicSpec:
    return TopicSpec(name=f"test.ticks.{uuid.uuid4().hex[:10]}", partitions=3, key="job:{job}")


@pytest.fixture
def registry() -> ScheduledJobs:
    return ScheduledJobs(HandlerGroup(f"jobs{uuid.uuid4().hex[:8]}"))


@asynccontextmanager
async def consuming(
    settings: Settings, registry: ScheduledJobs, services: Services | None = None
) -> AsyncIterator[None]:
    consumers = build_consumers(settings, groups=[registry.group], services=services)
    await consumers.declare_topics()
    try:
        async with consumers.broker:
            await consumers.broker.start()
            yield
    finally:
        await consumers.resources.engine.dispose()


def tick(job: str, slot: datetime | None = None) -> EventEnvelope:
    payload = SchedulerTick(job=job, slot=slot or datetime.now(UTC), kind="manual")
    return EventEnvelope.wrap(payload, producer="test")


async def runs_of(
    sessions: async_sessionmaker[AsyncSession], *event_ids: uuid.UUID
) -> dict[uuid.UUID, JobRun]:
    async with sessions() as session:
        rows = await session.scalars(select(JobRun).where(JobRun.event_id.in_(event_ids)))
        return {run.event_id: run for run in rows}


async def wait_for_runs(
    sessions: async_sessionmaker[AsyncSession],
    *event_ids: uuid.UUID,
    statuses: frozenset[JobRunStatus] = frozenset(
        {JobRunStatus.FINISHED, JobRunStatus.FAILED, JobRunStatus.SKIPPED}
    ),
    within: float = 30,
) -> dict[uuid.UUID, JobRun]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        runs = await runs_of(sessions, *event_ids)
        if len(runs) == len(event_ids) and all(r.status in statuses for r in runs.values()):
            return runs
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"runs not recorded in time: {runs}")
        await asyncio.sleep(0.1)


async def test_overlap_skip_skips_ticks_that_came_due_while_a_run_was_running(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    topic: TopicSpec,
    registry: ScheduledJobs,
) -> None:
    job = "scheduled_hourly_subscription_expiry"  # overlap: skip in the table
    calls: list[datetime] = []

    @registry.scheduled(job, topics=(topic,), retry_delays_s=())
    async def slow_job(event: SchedulerTick, ctx: HandlerContext) -> dict[str, int]:
        calls.append(event.slot)
        await asyncio.sleep(1.5)
        return {"expired": 1}

    first, during, after = tick(job), None, None
    async with consuming(kafka, registry), RawProducer(kafka) as producer:
        await producer.send_event(topic.name, first)
        await wait_for_runs(session_factory, first.event_id, statuses=frozenset({JobRunStatus.STARTED}))
        during = tick(job)  # comes due while the first run is still running
        await producer.send_event(topic.name, during)
        await wait_for_runs(session_factory, first.event_id, during.event_id)
        after = tick(job)
        await producer.send_event(topic.name, after)
        runs = await wait_for_runs(session_factory, first.event_id, during.event_id, after.event_id)

    assert runs[first.event_id].status is JobRunStatus.FINISHED
    assert runs[first.event_id].counts == {"expired": 1}
    assert (runs[first.event_id].duration_s or 0) >= 1.5
    assert runs[during.event_id].status is JobRunStatus.SKIPPED
    assert str(first.event_id) in (runs[during.event_id].error or "")
    assert runs[after.event_id].status is JobRunStatus.FINISHED
    assert len(calls) == 2


async def test_overlap_allow_runs_every_tick(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    topic: TopicSpec,
    registry: ScheduledJobs,
) -> None:
    job = "scheduled_hourly_subscription_renewal"

    @registry.scheduled(job, topics=(topic,), overlap=Overlap.ALLOW, retry_delays_s=())
    async def slow_job(event: SchedulerTick, ctx: HandlerContext) -> dict[str, int]:
        await asyncio.sleep(1.0)
        return {}

    first = tick(job)
    async with consuming(kafka, registry), RawProducer(kafka) as producer:
        await producer.send_event(topic.name, first)
        await wait_for_runs(session_factory, first.event_id, statuses=frozenset({JobRunStatus.STARTED}))
        during = tick(job)
        await producer.send_event(topic.name, during)
        runs = await wait_for_runs(session_factory, first.event_id, during.event_id)
    assert {run.status for run in runs.values()} == {JobRunStatus.FINISHED}


async def test_a_failed_run_is_recorded_emits_job_failed_and_the_tick_is_dead_lettered(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    topic: TopicSpec,
    registry: ScheduledJobs,
) -> None:
    job = "scheduled_daily_economy_check"

    @registry.scheduled(job, topics=(topic,), retry_delays_s=())
    async def broken_job(event: SchedulerTick, ctx: HandlerContext) -> dict[str, int]:
        await ctx.session.execute(text("SELECT 1"))
        raise ValueError("balances table is missing")

    failing = tick(job)
    async with consuming(kafka, registry), RawProducer(kafka) as producer:
        await producer.send_event(topic.name, failing)
        runs = await wait_for_runs(session_factory, failing.event_id)
        dead = await dead_letters_for(kafka, registry.group.specs[0].name, expected=1)

    run = runs[failing.event_id]
    assert run.status is JobRunStatus.FAILED
    assert run.error == "ValueError: balances table is missing"
    assert run.finished_at is not None
    async with session_factory() as session:
        failed = await session.scalar(
            select(OutboxEvent).where(
                OutboxEvent.event_id == derived_event_id("job.failed", failing.event_id, 0)
            )
        )
    assert failed is not None
    assert failed.event_type == "job.failed"
    assert failed.body["payload"]["error_type"] == "ValueError"
    assert failed.body["causation_id"] == str(failing.event_id)
    assert dead[0]["event_id"] == str(failing.event_id)


async def test_a_duplicate_tick_runs_the_job_once(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    topic: TopicSpec,
    registry: ScheduledJobs,
) -> None:
    job = "scheduled_daily_job_summary"
    calls: list[uuid.UUID] = []

    @registry.scheduled(job, topics=(topic,))
    async def summary(event: SchedulerTick, ctx: HandlerContext) -> dict[str, int]:
        calls.append(ctx.envelope.event_id)
        return {"runs": 0}

    once = tick(job)
    marker = tick(job)
    async with consuming(kafka, registry), RawProducer(kafka) as producer:
        await producer.send_events(topic.name, [once, once, once])
        await producer.send_event(topic.name, marker)  # same partition: handled after the copies
        await wait_for_runs(session_factory, once.event_id, marker.event_id)
    assert calls == [once.event_id, marker.event_id]
    async with session_factory() as session:
        completed = await session.scalar(
            text(
                "SELECT count(*) FROM outbox"
                " WHERE event_type = 'job.completed' AND body->>'causation_id' = :id"
            ),
            {"id": str(once.event_id)},
        )
    assert completed == 1


async def test_daily_cleanup_purges_past_retention_in_bounded_batches_and_reports_counts(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    topic: TopicSpec,
    registry: ScheduledJobs,
) -> None:
    now = datetime.now(UTC)
    consumer = f"test.cleanup.{uuid.uuid4().hex[:8]}"
    old_ids = [uuid.uuid4() for _ in range(5)]
    new_ids = [uuid.uuid4() for _ in range(2)]
    async with session_factory() as session:
        for event_id, at in [*((i, now - timedelta(days=40)) for i in old_ids), *((i, now) for i in new_ids)]:
            await session.execute(
                text(
                    "INSERT INTO processed_events (consumer, event_id, event_type, processed_at)"
                    " VALUES (:c, :e, 'test', :at)"
                ),
                {"c": consumer, "e": event_id, "at": at},
            )
        outbox = {
            "old_published": now - timedelta(days=8),
            "new_published": now - timedelta(days=1),
            "old_unpublished": None,
        }
        outbox_ids = {}
        for name, published_at in outbox.items():
            outbox_ids[name] = uuid.uuid4()
            await session.execute(
                text(
                    "INSERT INTO outbox (event_id, event_type, topic, key, body, created_at, published_at)"
                    " VALUES (:e, 'test', 'test', 'k', '{}'::jsonb, :created, :published)"
                ),
                {"e": outbox_ids[name], "created": now - timedelta(days=9), "published": published_at},
            )
        handler = f"test.cleanup.{uuid.uuid4().hex[:8]}"
        claims = {
            0: (now - timedelta(days=40), None),  # published long ago: purged
            1: (now - timedelta(days=1), None),  # published recently: kept
            2: (None, "MessageSizeTooLargeError"),  # kept in PostgreSQL for an operator: kept
        }
        for offset, (published_at, publish_error) in claims.items():
            await session.execute(
                text(
                    'INSERT INTO dead_letter_records (handler, topic, partition, "offset", reason, attempts,'
                    " failed_at, published_at, publish_error) VALUES (:h, 't', 0, :o, 'r', 0, :f, :p, :e)"
                ),
                {
                    "h": handler,
                    "o": offset,
                    "f": now - timedelta(days=41),
                    "p": published_at,
                    "e": publish_error,
                },
            )
        await session.commit()

    registry.scheduled("scheduled_daily_cleanup", topics=(topic,), retry_delays_s=())(scheduled_daily_cleanup)
    cleanup = tick("scheduled_daily_cleanup", slot=now)
    services = Services(retention=Retention(batch_size=2))
    async with consuming(kafka, registry, services), RawProducer(kafka) as producer:
        await producer.send_event(topic.name, cleanup)
        runs = await wait_for_runs(session_factory, cleanup.event_id)

    run = runs[cleanup.event_id]
    assert run.status is JobRunStatus.FINISHED, run.error
    assert run.counts["processed_events_deleted"] >= 5
    assert run.counts["outbox_rows_deleted"] >= 1
    assert set(run.counts) == {
        "processed_events_deleted",
        "outbox_rows_deleted",
        "job_runs_deleted",
        "telegram_sends_deleted",
        "broadcast_recipients_deleted",
        "invite_links_deleted",
        "dead_letter_claims_deleted",
    }
    async with session_factory() as session:
        claims_kept = set(
            await session.scalars(
                text('SELECT "offset" FROM dead_letter_records WHERE handler = :h'), {"h": handler}
            )
        )
        ledger = set(
            await session.scalars(
                text("SELECT event_id FROM processed_events WHERE consumer = :c"), {"c": consumer}
            )
        )
        kept = set(
            await session.scalars(
                text("SELECT event_id FROM outbox WHERE event_id = ANY(:ids)"),
                {"ids": list(outbox_ids.values())},
            )
        )
        completed = await session.scalar(
            select(OutboxEvent.body).where(
                OutboxEvent.event_type == "job.completed",
                OutboxEvent.body["causation_id"].astext == str(cleanup.event_id),
            )
        )
    assert ledger == set(new_ids)
    assert kept == {outbox_ids["new_published"], outbox_ids["old_unpublished"]}
    assert claims_kept == {1, 2}
    assert completed is not None
    assert completed["payload"]["counts"] == run.counts
