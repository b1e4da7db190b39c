"""Monitoring end to end: heartbeat ticks in over real Kafka, incidents in PostgreSQL, messages in the
Bot API double's admin chat (each test has an admin chat, consumer groups and topics of its own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from pydantic import SecretStr
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from consumers import monitoring
from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import AlertRaised
from dianabot_contracts.ids import derived_event_id
from dianabot_contracts.topics import TopicSpec
from dianabot_core.clock import SystemClock
from dianabot_core.db import create_engine
from dianabot_core.incidents import AlertIncident
from dianabot_core.jobs import JobRun, JobRunStatus
from dianabot_core.lag import offsets_reader
from dianabot_core.monitoring import HEARTBEAT_JOB
from dianabot_core.pipeline.handlers import HandlerContext
from dianabot_core.schedule.jobs import JobDefinition
from dianabot_core.settings import DatabaseSettings, Settings
from dianabot_core.watchdog import database_probe
from tests.integration.monitoring_support import Stack, forget_incidents, monitoring_stack, settle
from tests.integration.test_gamification_support import era
from tests.integration.test_telegram_support import (
    wait_for,
)

SUMMARY = monitoring.SUMMARY_JOB


@pytest.fixture(scope="module")
async def stack(
    kafka: Settings, admin: AIOKafkaAdminClient, session_factory: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Stack]:
    async with monitoring_stack(kafka, admin, session_factory) as built:
        yield built


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
async def _incidents_cleaned(stack: Stack, run_id: str) -> AsyncIterator[None]:
    yield
    await forget_incidents(stack, run_id)


async def commit_offset(settings: Settings, group: str, topic: str, offset: int) -> None:
    consumer = offsets_reader(settings.kafka, "test-commit", group_id=group)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def new_topic(admin: AIOKafkaAdminClient, name: str) -> str:
    await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    return name


# --- lag -----------------------------------------------------------------------------------------


async def test_a_lagging_group_raises_one_alert_and_one_recovery_once_it_catches_up(
    stack: Stack, admin: AIOKafkaAdminClient, run_id: str
) -> None:
    prefix = f"test.mon.{run_id}."
    topic = await new_topic(admin, f"{prefix}events")
    group = f"{prefix}laggard"
    stack.watch(lag_group_prefix=prefix, lag_threshold=3)
    for n in range(5):
        await stack.publish(
            AlertRaised(alert_key=f"x{n}", severity="warning", summary="filler"),
            TopicSpec(name=topic, partitions=1, key="k"),
        )
    await commit_offset(stack.settings, group, topic, 0)  # 5 records behind

    slot = era()
    first = await stack.run_job(HEARTBEAT_JOB, slot)
    await wait_for(lambda: len(stack.texts()) == 1)
    # Still lagging a minute later: the incident is updated, the chat is not told again.
    second = await stack.run_job(HEARTBEAT_JOB, slot + timedelta(minutes=1))
    key = f"monitoring.lag:{group}"
    await stack.wait_handled(
        derived_event_id("alert.raised", key, first.event_id),
        derived_event_id("alert.raised", key, second.event_id),
    )
    await settle()
    assert len(stack.texts()) == 1
    assert stack.texts()[0].startswith(
        f"🟠 WARNING: new incident\nConsumer group {group} is 5 records behind"
    )

    await commit_offset(stack.settings, group, topic, 5)
    third = await stack.run_job(HEARTBEAT_JOB, slot + timedelta(minutes=2))
    await wait_for(lambda: len(stack.texts()) == 2)
    await stack.run_job(HEARTBEAT_JOB, slot + timedelta(minutes=3))  # nothing open: nothing to say
    await stack.wait_handled(derived_event_id("alert.resolved", key, third.event_id))
    await settle()

    texts = stack.texts()
    assert len(texts) == 2
    assert texts[1].startswith(f"✅ Resolved: {key}\nCleared: the heartbeat no longer finds it.")
    async with stack.sessions() as session:
        incident = await session.get(AlertIncident, key)
    assert incident is not None
    assert incident.resolved_at is not None
    assert incident.notify_count == 1


async def test_an_open_incident_is_reannounced_once_the_remind_interval_passed(
    stack: Stack, run_id: str
) -> None:
    stack.watch(remind_every=timedelta(seconds=2))
    key = f"economy.drift.{run_id}"
    raised = AlertRaised(alert_key=key, severity="warning", summary="drift")
    await stack.wait_handled((await stack.publish(raised, stack.alerts)).event_id)
    await stack.wait_handled((await stack.publish(raised, stack.alerts)).event_id)  # within 2 s
    assert len(stack.texts()) == 1
    await asyncio.sleep(2.1)
    await stack.wait_handled((await stack.publish(raised, stack.alerts)).event_id)
    critical = raised.model_copy(update={"severity": "critical", "summary": "worse drift"})
    await stack.wait_handled((await stack.publish(critical, stack.alerts)).event_id)  # at once
    await wait_for(lambda: len(stack.texts()) == 3)
    await settle()

    texts = stack.texts()
    assert len(texts) == 3
    assert texts[1].startswith("🟠 WARNING: still open (reminder 1)\ndrift")
    assert texts[2].startswith("🔴 CRITICAL: now critical\nworse drift")


# --- stale jobs and dead letters -----------------------------------------------------------------


async def test_a_job_that_missed_its_slot_raises_a_critical_alert(stack: Stack, run_id: str) -> None:
    job = JobDefinition(f"test_hourly_{run_id}", "0 * * * *", "test", misfire_grace_s=600)
    stack.watch(jobs=(job,))
    slot = era()  # on the hour
    async with stack.sessions() as session, session.begin():
        await session.execute(insert(JobRun).values(_run(job.name, slot - timedelta(hours=3))))
    # At hh:30 the hh:00 slot is past its grace (10 min) and the run allowance (10 min).
    await stack.run_job(HEARTBEAT_JOB, slot + timedelta(minutes=30))
    await wait_for(lambda: stack.texts())
    await settle()

    [text] = stack.texts()
    assert text.startswith(
        f"🔴 CRITICAL: new incident\nJob {job.name} has not run for its slot {slot.isoformat()}"
    )
    assert f"last_finished_slot: {(slot - timedelta(hours=3)).isoformat()}" in text


async def test_new_dead_letters_since_the_previous_heartbeat_raise_an_alert(
    stack: Stack, admin: AIOKafkaAdminClient, run_id: str
) -> None:
    topic = await new_topic(admin, f"test.mon.{run_id}.dead_letters")
    stack.watch(dead_letter_topic=topic)
    slot = era()
    await stack.run_job(HEARTBEAT_JOB, slot)  # the baseline: 0
    dead = TopicSpec(name=topic, partitions=1, key="k")
    for n in range(3):
        await stack.publish(AlertRaised(alert_key=f"d{n}", severity="warning", summary="bad"), dead)
    await stack.run_job(HEARTBEAT_JOB, slot + timedelta(minutes=1))
    await wait_for(lambda: stack.texts())
    await settle()

    [text] = stack.texts()
    assert text.startswith(
        f"🟠 WARNING: new incident\n3 new dead letters on {topic} since the previous heartbeat"
    )


# --- the daily summary ---------------------------------------------------------------------------


def _run(
    job: str, slot: datetime, status: JobRunStatus = JobRunStatus.FINISHED, duration: float = 1.0
) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "job": job,
        "slot": slot,
        "kind": "on_time",
        "status": status,
        "started_at": slot,
        "finished_at": slot + timedelta(seconds=duration),
        "duration_s": duration,
    }


async def test_the_daily_summary_lists_each_jobs_runs_failures_and_open_incidents(
    stack: Stack, run_id: str
) -> None:
    stack.watch()
    slot = era()
    steady, shaky = f"test_steady_{run_id}", f"test_shaky_{run_id}"
    rows = [
        _run(steady, slot - timedelta(hours=20), duration=1.0),
        _run(steady, slot - timedelta(hours=10), duration=2.5),
        _run(steady, slot - timedelta(hours=25), duration=9.0),  # before the 24 h: not counted
        _run(shaky, slot - timedelta(hours=5), JobRunStatus.FAILED, 0.5),
        _run(shaky, slot - timedelta(hours=4), JobRunStatus.FAILED, 0.7),
        _run(shaky, slot - timedelta(hours=3), JobRunStatus.SKIPPED, 0.0),
        _run(shaky, slot - timedelta(hours=2), JobRunStatus.FINISHED, 0.2),
    ]
    key = f"post.failed:{run_id}"
    now = datetime.now(UTC)
    async with stack.sessions() as session, session.begin():
        await session.execute(insert(JobRun).values(rows))
        session.add(
            AlertIncident(alert_key=key, severity="warning", summary="s", opened_at=now, last_seen_at=now)
        )
    tick = await stack.run_job(SUMMARY, slot)
    await wait_for(lambda: stack.texts())
    await settle()

    [text] = stack.texts()
    assert text.startswith("📋 Jobs since")
    assert f"\n{steady}: 2 runs, 0 failed, 0 skipped, longest 2.5 s\n" in text
    assert f"\n❌ {shaky}: 4 runs, 2 failed, 1 skipped, longest 0.7 s\n" in text
    assert f"• [warning] {key} since" in text
    async with stack.sessions() as session:
        run = await session.scalar(select(JobRun).where(JobRun.event_id == tick.event_id))
    assert run is not None
    assert run.counts["failed_runs"] >= 2


# --- alerts raised elsewhere ---------------------------------------------------------------------


async def test_an_alert_from_elsewhere_reaches_the_admin_chat_once_even_when_redelivered(
    stack: Stack, run_id: str
) -> None:
    stack.watch()
    key = f"economy.drift.{run_id}"
    raised = EventEnvelope.wrap(
        AlertRaised(alert_key=key, severity="critical", summary="3 balances differ"), producer="economy"
    )
    # A first delivery sends the message, then its transaction is lost (a crash before the commit):
    # neither the incident nor the ledger row exists, only the send ledger's record.
    async with stack.sessions() as session:
        ctx = HandlerContext(
            session=session, envelope=raised, clock=SystemClock(), emit=_no_emit, services=stack.services
        )
        await monitoring.monitoring_notify_admin_task(AlertRaised.model_validate(raised.payload), ctx)
        await session.rollback()
    assert len(stack.texts()) == 1
    # The redelivery (twice over) finds the message recorded as sent.
    await stack.producer.send_event(stack.alerts.name, raised)
    await stack.producer.send_event(stack.alerts.name, raised)
    await stack.wait_handled(raised.event_id)
    await settle()

    [text] = stack.texts()
    assert text.startswith(f"🔴 CRITICAL: new incident\n3 balances differ\nkey: {key}, open since")
    async with stack.sessions() as session:
        incident = await session.get(AlertIncident, key)
    assert incident is not None
    assert (incident.notify_count, incident.resolved_at) == (1, None)


async def _no_emit(
    payload: EventPayload, *, event_id: uuid.UUID | None = None, topic: TopicSpec | None = None
) -> EventEnvelope:
    raise AssertionError("the alert handler emits nothing")


# --- the watchdog --------------------------------------------------------------------------------


async def test_the_watchdog_tells_the_admin_chat_directly_while_postgresql_is_unreachable(
    stack: Stack, engine: AsyncEngine
) -> None:
    watching = stack.watch(watchdog_failures=2, probe_timeout_s=2)
    nowhere = create_engine(
        DatabaseSettings(url=SecretStr("postgresql+asyncpg://dianabot:x@127.0.0.1:1/none"))
    )
    try:
        watchdog = monitoring.build_watchdog(nowhere, watching, stack.sender)
        for _ in range(3):
            await watchdog.probe_once()
    finally:
        await nowhere.dispose()
    [down] = stack.texts()
    assert down.startswith("🔴 CRITICAL: PostgreSQL is unreachable: ")
    assert "2 probes in a row failed" in down

    watchdog.probes["PostgreSQL"] = database_probe(engine, 2)  # the database is back
    await asyncio.sleep(1.1)  # the double allows one message a second per private chat
    await watchdog.probe_once()
    await watchdog.probe_once()
    recovered = "✅ Recovered: PostgreSQL is reachable again (monitoring.database)."
    assert stack.texts()[1:] == [f"{recovered}\nSeen by consumer {watchdog.origin}."]
