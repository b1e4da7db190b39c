"""What Kafka would not take, seen by the heartbeat: parked outbox rows and dead letters kept in
PostgreSQL raise alerts in the admin chat (real Kafka, PostgreSQL and the Bot API double)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_core.models import DeadLetterRecord, OutboxEvent
from dianabot_core.monitoring import HEARTBEAT_JOB
from dianabot_core.settings import Settings
from tests.integration.monitoring_support import Stack, forget_incidents, monitoring_stack, settle
from tests.integration.test_gamification_support import era
from tests.integration.test_telegram_support import wait_for


@pytest.fixture(scope="module")
async def stack(
    kafka: Settings, admin: AIOKafkaAdminClient, session_factory: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Stack]:
    async with monitoring_stack(kafka, admin, session_factory) as built:
        yield built


@pytest.fixture
async def run_id(stack: Stack) -> AsyncIterator[str]:
    run_id = uuid.uuid4().hex[:10]
    yield run_id
    await forget_incidents(stack, run_id)


async def test_parked_outbox_rows_raise_a_critical_alert_until_they_are_gone(
    stack: Stack, run_id: str
) -> None:
    topic = f"test.mon.{run_id}.events"
    stack.watch(parked_topic_prefix=f"test.mon.{run_id}.")
    reason = "record of 1,500,321 bytes exceeds the 1,048,576-byte limit (the relay's max_record_bytes)"
    parked_at = datetime(2026, 12, 1, 21, 30, tzinfo=UTC)
    async with stack.sessions() as session, session.begin():
        ids = await session.scalars(
            insert(OutboxEvent)
            .values(
                [_outbox_row(topic, parked_at, reason), _outbox_row(topic, parked_at - timedelta(hours=1))]
            )
            .returning(OutboxEvent.id)
        )
        parked = list(ids)
    slot = era()
    await stack.run_job(HEARTBEAT_JOB, slot)
    await wait_for(lambda: stack.texts())

    key = f"monitoring.outbox_parked:{topic}"
    [text] = stack.texts()
    assert text.startswith(
        f"🔴 CRITICAL: new incident\nParked outbox rows for {topic}: 2 (events Kafka can never take, so "
        f"never published). Latest (2026-12-01 21:30 UTC): {reason}\n"
    )
    assert f"key: {key}," in text

    async with stack.sessions() as session, session.begin():  # an operator dealt with them
        await session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(parked)))
    await stack.run_job(HEARTBEAT_JOB, slot + timedelta(minutes=1))
    await wait_for(lambda: len(stack.texts()) == 2)
    assert stack.texts()[1].startswith(f"✅ Resolved: {key}\nCleared: the heartbeat no longer finds it.")


async def test_dead_letters_kafka_would_not_take_raise_an_alert(stack: Stack, run_id: str) -> None:
    handler = f"dianabot.mon{run_id}.record"
    stack.watch(stored_dead_letter_handler_prefix=f"dianabot.mon{run_id}.")
    failed_at = datetime(2026, 12, 1, 21, 45, tzinfo=UTC)
    error = "MessageSizeTooLargeError: [Error 10] MessageSizeTooLargeError"
    async with stack.sessions() as session, session.begin():
        await session.execute(
            insert(DeadLetterRecord).values(
                [
                    _dead_letter(handler, 1, failed_at, publish_error=error),
                    _dead_letter(handler, 2, failed_at + timedelta(minutes=1)),  # on the topic: fine
                ]
            )
        )
    try:
        await stack.run_job(HEARTBEAT_JOB, era())
        await wait_for(lambda: stack.texts())
        await settle()
    finally:
        async with stack.sessions() as session, session.begin():
            await session.execute(delete(DeadLetterRecord).where(DeadLetterRecord.handler == handler))

    [text] = stack.texts()
    assert text.startswith(
        f"🟠 WARNING: new incident\nDead letters of {handler} kept in PostgreSQL: 1 (Kafka would not "
        f"take them; see dead_letter_records). Latest (2026-12-01 21:45 UTC): {error}\n"
    )
    assert f"key: monitoring.dead_letters_stored:{handler}," in text


def _outbox_row(topic: str, parked_at: datetime, reason: str = "too large") -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "event_type": "user.activity",
        "topic": topic,
        "key": "user:1",
        "body": {},
        "parked_at": parked_at,
        "parked_reason": reason,
    }


def _dead_letter(
    handler: str, offset: int, failed_at: datetime, publish_error: str | None = None
) -> dict[str, Any]:
    return {
        "handler": handler,
        "topic": "test.mon.source",
        "partition": 0,
        "offset": offset,
        "reason": "permanent",
        "attempts": 1,
        "failed_at": failed_at,
        "published_at": None if publish_error else failed_at,
        "publish_error": publish_error,
    }
