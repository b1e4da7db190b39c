"""The users handlers through the whole consumer stack, with Kafka in memory and the real database.

``TestKafkaBroker`` drives the same batch subscribers the service runs (manual commits, the
tolerant parser, raw bodies): each publish arrives as a batch of one record, ``publish_batch``
as one batch of many.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from faststream.kafka import KafkaBroker, KafkaResponse, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import users
from consumers.app import build_consumers
from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import UserActivity, UserRegistered
from dianabot_contracts.topics import DEAD_LETTERS, USERS
from dianabot_core.models import Balance, ProcessedEvent, User
from tests.conftest import make_settings

REGISTER = "dianabot.users.register"
RECORD_ACTIVITY = "dianabot.users.record_activity"


def _new_user_id() -> int:
    # The test database is shared: ids no other test (or earlier run) uses.
    return random.randint(10**12, 2**62)


def _envelope(payload: EventPayload) -> EventEnvelope:
    return EventEnvelope.wrap(payload, producer="bot")


@dataclass
class InMemory:
    broker: KafkaBroker
    dead_letters: list[KafkaMessage] = field(default_factory=list)


@pytest.fixture
async def kafka(session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[InMemory]:
    """The consumers of the users handlers on an in-memory broker; their database is the test one."""
    consumers = build_consumers(make_settings(), groups=[users.handlers])
    in_memory = InMemory(consumers.broker)

    @consumers.broker.subscriber(DEAD_LETTERS.name)
    async def collect(message: KafkaMessage) -> None:
        in_memory.dead_letters.append(message)

    try:
        async with TestKafkaBroker(consumers.broker):
            yield in_memory
    finally:
        await consumers.resources.engine.dispose()


async def _publish(broker: KafkaBroker, envelope: EventEnvelope) -> None:
    await broker.publish(
        envelope.to_body(), USERS.name, key=envelope.key.encode(), headers=envelope.to_headers()
    )


async def _count(session_factory: async_sessionmaker[AsyncSession], statement: object) -> int:
    async with session_factory() as session:
        return int(await session.scalar(statement) or 0)  # type: ignore[call-overload]


async def _ledger_rows(session_factory: async_sessionmaker[AsyncSession], envelope: EventEnvelope) -> int:
    return await _count(
        session_factory,
        select(func.count())
        .select_from(ProcessedEvent)
        .where(ProcessedEvent.consumer == REGISTER, ProcessedEvent.event_id == envelope.event_id),
    )


async def _users(session_factory: async_sessionmaker[AsyncSession], user_id: int) -> int:
    return await _count(session_factory, select(func.count()).select_from(User).where(User.id == user_id))


async def test_a_registration_creates_the_user_and_an_empty_balance(
    kafka: InMemory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    user_id = _new_user_id()
    envelope = _envelope(
        UserRegistered(user_id=user_id, telegram_id=user_id, username="diana", language_code="es")
    )

    await _publish(kafka.broker, envelope)

    async with session_factory() as session:
        user = await session.get(User, user_id)
        balance = await session.get(Balance, user_id)
    assert user is not None
    assert (user.telegram_id, user.username, user.language_code) == (user_id, "diana", "es")
    assert balance is not None
    assert (balance.amount, balance.total_earned) == (0, 0)
    assert await _ledger_rows(session_factory, envelope) == 1


async def test_a_repeated_registration_is_a_duplicate(
    kafka: InMemory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    user_id = _new_user_id()
    envelope = _envelope(UserRegistered(user_id=user_id, telegram_id=user_id))

    await _publish(kafka.broker, envelope)
    await _publish(kafka.broker, envelope)  # redelivered later, in a batch of its own

    assert await _users(session_factory, user_id) == 1
    assert await _ledger_rows(session_factory, envelope) == 1


async def test_a_registration_twice_in_one_batch_is_handled_once(
    kafka: InMemory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    user_id = _new_user_id()
    envelope = _envelope(UserRegistered(user_id=user_id, telegram_id=user_id))
    record = KafkaResponse(envelope.to_body(), key=envelope.key.encode())

    # One batch of two records: the pipeline's fast path claims the event id once.
    await kafka.broker.publish_batch(record, record, topic=USERS.name, headers=envelope.to_headers())
    await _publish(kafka.broker, envelope)  # and a later batch sees it as done

    assert await _users(session_factory, user_id) == 1
    assert await _ledger_rows(session_factory, envelope) == 1


async def test_activity_moves_last_active_forward_never_back(
    kafka: InMemory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    user_id = _new_user_id()
    await _publish(kafka.broker, _envelope(UserRegistered(user_id=user_id, telegram_id=user_id)))
    noon = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)

    async def last_active_after(at: datetime) -> datetime | None:
        await _publish(kafka.broker, _envelope(UserActivity(user_id=user_id, at=at)))
        async with session_factory() as session:
            return await session.scalar(select(User.last_active_at).where(User.id == user_id))

    assert await last_active_after(noon) == noon
    assert await last_active_after(noon - timedelta(hours=1)) == noon  # arrived late: ignored
    assert await last_active_after(noon + timedelta(minutes=5)) == noon + timedelta(minutes=5)


async def test_a_malformed_registration_is_dead_lettered_with_its_reason(
    kafka: InMemory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    user_id = _new_user_id()
    body = _envelope(UserRegistered(user_id=user_id, telegram_id=user_id)).model_dump(mode="json")
    del body["payload"]["telegram_id"]

    await kafka.broker.publish(body, USERS.name, key=f"user:{user_id}".encode())

    # Both users handlers read the topic, and both dead-letter what neither can decode.
    letters = kafka.dead_letters
    assert sorted(m.headers["x-dlq-handler"] for m in letters) == [RECORD_ACTIVITY, REGISTER]
    assert {m.headers["x-dlq-reason"] for m in letters} == {
        "malformed: user.registered payload schema violation: telegram_id: Field required"
    }
    assert await _users(session_factory, user_id) == 0


async def test_a_batch_of_activity_keeps_each_users_latest_time_once(
    kafka: InMemory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    first, second = _new_user_id(), _new_user_id()
    for user_id in (first, second):
        await _publish(kafka.broker, _envelope(UserRegistered(user_id=user_id, telegram_id=user_id)))
    noon = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    times = {first: [noon, noon + timedelta(minutes=7), noon - timedelta(hours=2)], second: [noon]}
    envelopes = [_envelope(UserActivity(user_id=u, at=at)) for u, ats in times.items() for at in ats]
    records = [KafkaResponse(e.to_body(), key=e.key.encode(), headers=e.to_headers()) for e in envelopes]

    # One batch, out of order, with the first event redelivered inside it: one coalesced update.
    await kafka.broker.publish_batch(*records, records[0], topic=USERS.name)

    async with session_factory() as session:
        rows = await session.execute(select(User.id, User.last_active_at).where(User.id.in_(times)))
        latest = {user_id: at for user_id, at in rows}
        claimed = await session.scalar(
            select(func.count())
            .select_from(ProcessedEvent)
            .where(
                ProcessedEvent.consumer == RECORD_ACTIVITY,
                ProcessedEvent.event_id.in_([e.event_id for e in envelopes]),
            )
        )
    assert latest == {first: noon + timedelta(minutes=7), second: noon}
    assert claimed == len(envelopes)
