"""A broadcast to a very large listed audience on the real Kafka and PostgreSQL: no record grows with it.

The 200,000 ids live in ``broadcast_audience`` (written with the request), the fan-out reads them a
page at a time, and every record on the way (request, continuations, one notification per user)
stays a few kilobytes; as an inline list the same ids would be about 1.5 MB, over Kafka's 1 MB.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import broadcasts
from dianabot_contracts.events import MessageContent
from dianabot_core.models import OutboxEvent
from dianabot_core.settings import Settings
from dianabot_core.telegram.broadcasts import add_broadcast_to_outbox, broadcast_progress
from dianabot_core.telegram.models import BroadcastAudience
from tests.integration.outbox_support import read_topic
from tests.integration.test_telegram_support import (
    create_lanes,
    create_users,
    running_telegram_consumers,
    sender_for,
    settings_for,
    telegram_double,
    wait_for,
)

AUDIENCE = 200_000
USERS = 1_000  # the rest of the ids are nobody (ids no user has): skipped, as a list may hold
UNKNOWN_BASE = 10**12


async def test_a_broadcast_to_200000_listed_users_is_made_of_records_of_bounded_size(
    kafka: Settings, admin: AIOKafkaAdminClient, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    lanes = await create_lanes(admin)
    group = broadcasts.build_handlers(
        broadcasts=lanes.broadcasts, critical=lanes.critical, bulk=lanes.bulk, module=f"{lanes.module}b"
    )
    users = await create_users(session_factory, USERS)
    ids = [u.id for u in users] + [UNKNOWN_BASE + n for n in range(AUDIENCE - USERS)]
    broadcast_id = f"large-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    async with session_factory() as session, session.begin():
        await add_broadcast_to_outbox(
            session,
            broadcast_id=broadcast_id,
            user_ids=ids,
            content=MessageContent(text="hola a todos"),
            producer="test",
            topic=lanes.broadcasts.name,
        )
    stored_s = time.perf_counter() - started

    async def fanned_out() -> bool:
        async with session_factory() as session:
            progress = await broadcast_progress(session, broadcast_id)
            unpublished = await session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.topic.in_([lanes.broadcasts.name, lanes.bulk.name]))
                .where(OutboxEvent.published_at.is_(None))
            )
        return progress is not None and progress.fanned_out and unpublished == 0

    # Only the fan-out runs: the notifications stay on the bulk lane (nobody sends them here).
    async with (
        telegram_double() as double,
        sender_for(double, broadcast_chunk_size=200) as sender,
        running_telegram_consumers(settings_for(double), [group], sender),
    ):
        await wait_for(fanned_out, within=120)
    fanned_out_s = time.perf_counter() - started

    requests = await read_topic(kafka, lanes.broadcasts.name, lanes.broadcasts.partitions)
    notifications = await read_topic(kafka, lanes.bulk.name, lanes.bulk.partitions)
    largest = max(r.size for r in [*requests, *notifications])
    print(
        f"\nbroadcast to {AUDIENCE:,} listed ids ({USERS:,} users): audience stored in {stored_s:.2f}s, "
        f"fanned out in {fanned_out_s:.1f}s; {len(requests)} request records (largest "
        f"{max(r.size for r in requests):,} bytes), {len(notifications):,} notifications (largest "
        f"{max(r.size for r in notifications):,} bytes)"
    )
    assert largest < 8_000
    # The request and one continuation per full page of 200, none of them carrying ids.
    assert len(requests) == 1 + USERS // 200
    assert all(r.body["payload"]["user_ids"] == [] for r in requests)
    assert Counter(r.body["payload"]["user_id"] for r in notifications) == Counter(u.id for u in users)
    async with session_factory() as session:
        progress = await broadcast_progress(session, broadcast_id)
        left = await session.scalar(
            select(func.count()).where(BroadcastAudience.broadcast_id == broadcast_id)
        )
        parked = await session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.topic.in_([lanes.broadcasts.name, lanes.bulk.name]))
            .where(OutboxEvent.parked_at.is_not(None))
        )
    assert progress is not None
    assert (progress.recipients, progress.fanned_out) == (USERS, True)
    assert left == 0  # each step deleted the ids it went past
    assert parked == 0
