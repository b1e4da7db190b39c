"""Outbox rows Kafka can never take are parked, on the real PostgreSQL and Kafka; the rows behind go on.

A row is parked (``parked_at``, ``parked_reason``), logged as an error and counted once, whether
the relay measured it too large before sending (its own limit, or the topic's
``max.message.bytes``), the producer refused it, or Kafka's acknowledgement said it is too large.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin import NewTopic as KafkaTopic
from aiokafka.errors import MessageSizeTooLargeError
from prometheus_client import REGISTRY
from sqlalchemy import select

from dianabot_core.kafka import create_broker
from dianabot_core.models import OutboxEvent
from dianabot_core.outbox import OutboxRelay
from dianabot_core.publisher import EventPublisher
from dianabot_core.record_limits import DEFAULT_MAX_RECORD_BYTES
from dianabot_core.settings import Settings
from tests.integration.outbox_support import (
    PRODUCER,
    NewTopic,
    SessionFactory,
    activity,
    new_lock_key,
    read_topic,
    write,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(kafka: Settings) -> AsyncIterator[EventPublisher]:
    broker = create_broker(kafka.kafka)
    await broker.connect()
    yield EventPublisher(broker, PRODUCER)
    await broker.stop()


def parked_total() -> float:
    return REGISTRY.get_sample_value("dianabot_outbox_parked_total") or 0.0


async def outbox_rows(session_factory: SessionFactory, topic: str) -> list[Any]:
    async with session_factory() as session:
        result = await session.execute(
            select(
                OutboxEvent.id,
                OutboxEvent.event_id,
                OutboxEvent.published_at,
                OutboxEvent.parked_at,
                OutboxEvent.parked_reason,
            )
            .where(OutboxEvent.topic == topic)
            .order_by(OutboxEvent.id)
        )
        return list(result)


async def relay_all(relay: OutboxRelay) -> None:
    while await relay.relay_once():
        pass


async def _topic_with_limit(admin: AIOKafkaAdminClient, max_message_bytes: int) -> str:
    topic = f"test.limit.{uuid.uuid4().hex[:12]}"
    limit = {"max.message.bytes": str(max_message_bytes)}
    await admin.create_topics(
        [KafkaTopic(topic, num_partitions=1, replication_factor=1, topic_configs=limit)]
    )
    return topic


def parked_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dianabot.outbox" and r.levelname == "ERROR" and " parked: " in r.getMessage()
    ]


async def test_an_oversized_row_between_normal_ones_is_parked_once_and_the_rest_go_on_in_order(
    kafka: Settings,
    session_factory: SessionFactory,
    new_topic: NewTopic,
    publisher: EventPublisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = await new_topic(partitions=1)
    payloads = [activity(1, i) for i in range(10)]
    payloads[4] = activity(1, 4, kind="x" * 1_500_000)  # the same key as its neighbours
    written = await write(session_factory, topic, payloads, per_transaction=10)
    relay = OutboxRelay(session_factory, publisher, topics={topic}, lock_key=new_lock_key(), batch_size=3)
    before = parked_total()

    await relay_all(relay)
    await relay_all(relay)  # a parked row is not tried again

    rows = await outbox_rows(session_factory, topic)
    big = rows[4]
    assert big.published_at is None
    assert big.parked_at is not None
    assert re.fullmatch(
        r"record of 1,50\d,\d{3} bytes exceeds the 1,048,576-byte limit \(the relay's max_record_bytes\)",
        big.parked_reason,
    )
    assert all(r.published_at is not None and r.parked_at is None for i, r in enumerate(rows) if i != 4)
    records = await read_topic(kafka, topic, partitions=1)
    assert [r.event_id for r in records] == [e.event_id for i, e in enumerate(written) if i != 4]
    assert parked_total() == before + 1
    assert parked_logs(caplog) == [f"outbox row {big.id} parked: {big.parked_reason}"]


async def test_a_row_over_its_topics_max_message_bytes_is_parked_before_it_is_sent(
    kafka: Settings,
    session_factory: SessionFactory,
    admin: AIOKafkaAdminClient,
    publisher: EventPublisher,
) -> None:
    # Had the broker refused it, the idempotent producer would fail every later record of the
    # partition (OutOfOrderSequenceNumber); checked first, it is never sent.
    topic = await _topic_with_limit(admin, 50_000)
    payloads = [activity(1, i) for i in range(6)]
    payloads[2] = activity(1, 2, kind="y" * 60_000)
    written = await write(session_factory, topic, payloads, per_transaction=6)
    relay = OutboxRelay(session_factory, publisher, topics={topic}, lock_key=new_lock_key())

    await relay_all(relay)

    rows = await outbox_rows(session_factory, topic)
    assert re.fullmatch(
        r"record of 6\d,\d{3} bytes exceeds the 50,000-byte limit "
        rf"\(max.message.bytes of {re.escape(topic)}\)",
        rows[2].parked_reason,
    )
    assert [r.published_at is not None for r in rows] == [True, True, False, True, True, True]
    records = await read_topic(kafka, topic, partitions=1)
    assert [r.event_id for r in records] == [e.event_id for i, e in enumerate(written) if i != 2]


async def test_a_row_the_producer_refuses_as_too_large_is_parked(
    kafka: Settings, session_factory: SessionFactory, admin: AIOKafkaAdminClient, publisher: EventPublisher
) -> None:
    """Relay and topic limits above the producer's (``max_request_size``): aiokafka refuses it."""
    topic = await _topic_with_limit(admin, 4 * DEFAULT_MAX_RECORD_BYTES)
    payloads = [activity(1, 0), activity(1, 1, kind="z" * 1_200_000), activity(1, 2)]
    written = await write(session_factory, topic, payloads, per_transaction=3)
    relay = OutboxRelay(
        session_factory,
        publisher,
        topics={topic},
        lock_key=new_lock_key(),
        max_record_bytes=4 * DEFAULT_MAX_RECORD_BYTES,
    )

    await relay_all(relay)

    rows = await outbox_rows(session_factory, topic)
    assert rows[1].parked_reason.startswith("the producer refused it: MessageSizeTooLargeError")
    assert [r.published_at is not None for r in rows] == [True, False, True]
    records = await read_topic(kafka, topic, partitions=1)
    assert [r.event_id for r in records] == [written[0].event_id, written[2].event_id]


class _RefusingPublisher(EventPublisher):
    """Kafka's acknowledgement of the records whose send number is in ``refuse`` says: too large."""

    def __init__(self, publisher: EventPublisher, refuse: set[int]) -> None:
        super().__init__(publisher.broker, publisher.producer)
        self.sends = 0
        self.refuse = refuse

    async def enqueue(
        self,
        topic: str,
        *,
        key: str,
        body: bytes,
        headers: Mapping[str, str],
        correlation_id: str | None = None,
    ) -> asyncio.Future[Any]:
        self.sends += 1
        if self.sends in self.refuse:
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(MessageSizeTooLargeError())
            return refused
        return await super().enqueue(
            topic, key=key, body=body, headers=headers, correlation_id=correlation_id
        )


async def test_a_row_kafka_acknowledges_as_too_large_is_parked_and_the_rest_are_marked(
    kafka: Settings, session_factory: SessionFactory, new_topic: NewTopic, publisher: EventPublisher
) -> None:
    topic = await new_topic(partitions=1)
    written = await write(session_factory, topic, [activity(1, i) for i in range(5)], per_transaction=5)
    relay = OutboxRelay(
        session_factory, _RefusingPublisher(publisher, {3}), topics={topic}, lock_key=new_lock_key()
    )

    assert await relay.relay_once() == 4
    assert await relay.relay_once() == 0

    rows = await outbox_rows(session_factory, topic)
    assert rows[2].parked_reason.startswith("Kafka refused it: MessageSizeTooLargeError")
    assert [r.published_at is not None for r in rows] == [True, True, False, True, True]
    records = await read_topic(kafka, topic, partitions=1)
    assert [r.event_id for r in records] == [e.event_id for i, e in enumerate(written) if i != 2]
