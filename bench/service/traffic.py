"""What the bench publishes, the rows it needs first, and the producer that sends it.

Each kind of event has its own id range of users (``users.id`` = Telegram chat id):

* ``user.activity``: existing users; the handler moves ``last_active_at`` forward;
* ``subscription.expired``: users whose expired subscription was followed by an active one (renewed
  in time), so ``remove_expired_member`` locks both rows, finds an active subscription and leaves
  the user in the VIP channel: database work only, no Bot API call;
* ``notification.requested``: existing users, two bulk messages each, sent to the Bot API double;
* ``user.registered``: new users, created by the events (a per-event handler).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from bench.chaos import database
from bench.chaos.workload import Fixtures
from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import (
    MessageContent,
    NotificationRequested,
    Priority,
    SubscriptionExpired,
    UserActivity,
    UserRegistered,
)
from dianabot_contracts.topics import topic_for
from dianabot_core.models import Subscription, SubscriptionPlan, SubscriptionStatus
from dianabot_core.settings import KafkaSettings

PRODUCER = "bench-service"
ACTIVITY_USERS = 10_000_000
RENEWED_USERS = 40_000_000
NOTIFIED_USERS = 50_000_000
REGISTERED_USERS = 60_000_000
NOTIFICATIONS_PER_USER = 2
NOTIFICATION_TEXT = "bench notification #"
EXPIRED_AT = datetime(2029, 12, 31, tzinfo=UTC)
ACTIVE_SUBSCRIPTION_IDS = 1_000_000  # the renewed subscriptions' ids start above the expired ones'


@dataclass(frozen=True)
class Sizes:
    activity_users: int
    renewed_users: int
    notifications: int

    @property
    def notified_users(self) -> int:
        return max(1, self.notifications // NOTIFICATIONS_PER_USER)


def ids(base: int, count: int) -> list[int]:
    return [base + i for i in range(1, count + 1)]


async def load_fixtures(url: str, sizes: Sizes) -> None:
    """The users, and per renewed user an expired subscription and the active one that followed."""
    renewed = ids(RENEWED_USERS, sizes.renewed_users)
    users = ids(ACTIVITY_USERS, sizes.activity_users) + renewed + ids(NOTIFIED_USERS, sizes.notified_users)
    active_end = datetime.now(UTC) + timedelta(days=3650)
    await database.load_fixtures(
        url,
        Fixtures(
            users=users,
            subscriptions=[(ACTIVE_SUBSCRIPTION_IDS + n, u, active_end) for n, u in enumerate(renewed, 1)],
        ),
    )
    expired = [
        {
            "id": n,
            "user_id": user,
            "plan": SubscriptionPlan.MONTHLY,
            "status": SubscriptionStatus.EXPIRED,
            "start_at": EXPIRED_AT - timedelta(days=30),
            "end_at": EXPIRED_AT,
        }
        for n, user in enumerate(renewed, 1)
    ]
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for start in range(0, len(expired), database.CHUNK):
                await connection.execute(insert(Subscription), expired[start : start + database.CHUNK])
    finally:
        await engine.dispose()


# --- events --------------------------------------------------------------------------------------

Make = Callable[[int, datetime], EventPayload]


def activity(rng: random.Random, sizes: Sizes) -> Make:
    users = ids(ACTIVITY_USERS, sizes.activity_users)
    return lambda n, now: UserActivity(user_id=rng.choice(users), at=now, kind="message")


def expiries(n: int, now: datetime) -> EventPayload:
    return SubscriptionExpired(user_id=RENEWED_USERS + n, subscription_id=n, end_at=EXPIRED_AT)


def notifications(sizes: Sizes) -> Make:
    def make(n: int, now: datetime) -> EventPayload:
        return NotificationRequested(
            user_id=NOTIFIED_USERS + 1 + (n - 1) % sizes.notified_users,
            content=MessageContent(text=f"{NOTIFICATION_TEXT}{n}"),
            priority=Priority.BULK,
        )

    return make


def registrations(after: int) -> Make:
    """New users numbered from `after` + 1 (each phase registers its own)."""

    def make(n: int, now: datetime) -> EventPayload:
        user = REGISTERED_USERS + after + n
        return UserRegistered(
            user_id=user, telegram_id=user, username=f"bench{after + n}", language_code="es"
        )

    return make


# --- publishing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: UUID
    payload: EventPayload


def outgoing(payload: EventPayload, now: datetime) -> Outgoing:
    envelope = EventEnvelope.wrap(payload, producer=PRODUCER, occurred_at=now)
    headers = [(k, v.encode()) for k, v in envelope.to_headers().items()]
    return Outgoing(
        topic_for(payload).name,
        envelope.key.encode(),
        envelope.to_body(),
        headers,
        envelope.event_id,
        payload,
    )


@dataclass
class Sent:
    """What one phase published: each event's payload by id, when it was handed to the producer
    (epoch seconds), where it landed (topic, partition, offset), and how long publishing took."""

    payloads: dict[UUID, EventPayload] = field(default_factory=dict)
    published_at: dict[UUID, float] = field(default_factory=dict)
    positions: set[tuple[str, int, int]] = field(default_factory=set)
    seconds: float = 0.0

    def landed(self, metadata: Iterable[RecordMetadata]) -> None:
        self.positions.update((m.topic, m.partition, m.offset) for m in metadata)


class Publisher:
    """One idempotent producer (acks=all, no linger): records leave as soon as they are sent."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            client_id=f"dianabot-{PRODUCER}-producer",
            acks="all",
            enable_idempotence=True,
        )
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def backlog(self, make: Make, count: int) -> Sent:
        """`count` events as fast as the producer takes them (built first: only sending is timed)."""
        now = datetime.now(UTC)
        records = [outgoing(make(n, now + timedelta(microseconds=n)), now) for n in range(1, count + 1)]
        sent = Sent()
        started = time.monotonic()
        sent.landed(await asyncio.gather(*[await self._send(record, sent) for record in records]))
        sent.seconds = time.monotonic() - started
        return sent

    async def paced(self, make: Make, rate: float, seconds: float) -> Sent:
        """`rate` events a second for `seconds`, each stamped (``occurred_at``) as it is sent."""
        sent = Sent()
        futures = []
        started = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = datetime.now(UTC)
            futures.append(await self._send(outgoing(make(i + 1, now), now), sent))
        sent.seconds = time.monotonic() - started
        sent.landed(await asyncio.gather(*futures))
        return sent

    async def _send(self, record: Outgoing, sent: Sent) -> asyncio.Future[RecordMetadata]:
        assert self.producer is not None
        sent.payloads[record.event_id] = record.payload
        sent.published_at[record.event_id] = time.time()
        future: asyncio.Future[RecordMetadata] = await self.producer.send(
            record.topic, record.value, key=record.key, headers=record.headers
        )
        return future
