"""EventPublisher on FastStream's in-memory TestKafkaBroker: topic routing, key, headers, body."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import NotificationRequested, Priority, UserActivity
from dianabot_contracts.topics import NOTIFICATIONS_BULK, NOTIFICATIONS_CRITICAL, USERS
from dianabot_core.kafka import create_broker
from dianabot_core.publisher import EventPublisher
from dianabot_core.settings import KafkaSettings

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_payload_lands_on_its_topic_with_key_headers_and_envelope_body() -> None:
    broker = create_broker(KafkaSettings())
    seen: list[KafkaMessage] = []

    @broker.subscriber(USERS.name)
    async def record(message: KafkaMessage) -> None:
        seen.append(message)

    async with TestKafkaBroker(broker):
        publisher = EventPublisher(broker, "bot")
        envelope = await publisher.publish(
            UserActivity(user_id=42, at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC)),
            headers={"traceparent": TRACEPARENT},
        )

    [message] = seen
    raw = message.raw_message
    assert not isinstance(raw, tuple)  # one record, not a batch
    assert raw.topic == USERS.name
    assert raw.key == b"user:42"
    assert message.content_type == "application/json"
    assert message.headers["event_id"] == str(envelope.event_id)
    assert message.headers["event_type"] == "user.activity"
    assert message.headers["traceparent"] == TRACEPARENT
    assert message.correlation_id == str(envelope.event_id)
    assert EventEnvelope.model_validate_json(message.body) == envelope
    assert envelope.producer == "bot"
    assert envelope.payload["user_id"] == 42


async def test_a_critical_notification_takes_the_critical_topic_and_keeps_the_causal_chain() -> None:
    broker = create_broker(KafkaSettings())
    seen: dict[str, list[KafkaMessage]] = {NOTIFICATIONS_CRITICAL.name: [], NOTIFICATIONS_BULK.name: []}

    @broker.subscriber(NOTIFICATIONS_CRITICAL.name)
    async def critical(message: KafkaMessage) -> None:
        seen[NOTIFICATIONS_CRITICAL.name].append(message)

    @broker.subscriber(NOTIFICATIONS_BULK.name)
    async def bulk(message: KafkaMessage) -> None:
        seen[NOTIFICATIONS_BULK.name].append(message)

    cause = EventEnvelope.wrap(UserActivity(user_id=7, at=datetime.now(UTC)), producer="bot")
    async with TestKafkaBroker(broker):
        publisher = EventPublisher(broker, "jobs")
        sent = await publisher.publish(
            NotificationRequested(user_id=7, template="vip.welcome", priority=Priority.CRITICAL),
            caused_by=cause,
        )

    assert seen[NOTIFICATIONS_BULK.name] == []
    [message] = seen[NOTIFICATIONS_CRITICAL.name]
    received = EventEnvelope.model_validate_json(message.body)
    assert received.event_id == sent.event_id
    assert received.causation_id == cause.event_id
    assert received.correlation_id == cause.event_id
    # The correlation id of the chain travels as FastStream's correlation id too.
    assert message.correlation_id == str(cause.event_id)


async def test_the_envelope_headers_win_over_extra_headers_and_records_need_them() -> None:
    broker = create_broker(KafkaSettings())
    seen: list[KafkaMessage] = []

    @broker.subscriber("custom.topic")
    async def record(message: KafkaMessage) -> None:
        seen.append(message)

    async with TestKafkaBroker(broker):
        publisher = EventPublisher(broker, "bot")
        envelope = await publisher.publish(
            UserActivity(user_id=1, at=datetime.now(UTC)),
            topic="custom.topic",
            headers={"event_id": "spoofed", "x-extra": "1"},
        )
        with pytest.raises(ValueError, match="event_id and event_type"):
            await publisher.enqueue("custom.topic", key="k", body=b"{}", headers={"event_type": "x"})

    [message] = seen
    assert message.headers["event_id"] == str(envelope.event_id)
    assert message.headers["x-extra"] == "1"
