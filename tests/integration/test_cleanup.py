"""The daily cleanup on the real pipeline: the send ledger, broadcast recipients and expired invite
links are purged past their retention in bounded batches, and a second run finds nothing to do."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.jobs import scheduled_daily_cleanup
from consumers.services import Retention, Services
from dianabot_core.jobs import JobRunStatus
from dianabot_core.models import Subscription, SubscriptionPlan, User, VipInviteLink
from dianabot_core.settings import Settings
from dianabot_core.telegram.models import (
    Broadcast,
    BroadcastRecipient,
    RecipientStatus,
    SendStatus,
    TelegramSend,
)
from tests.integration.pipeline_support import RawProducer
from tests.integration.test_gamification_support import (
    consuming,
    new_registry,
    tick,
    unique_topic,
    wait_for_run,
)

CLEANUP = "scheduled_daily_cleanup"
DAY = timedelta(days=1)
NEW_COUNTS = ("telegram_sends_deleted", "broadcast_recipients_deleted", "invite_links_deleted")


@pytest.fixture
async def user_id(session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[int]:
    user = random.randint(10**12, 2**62)
    async with session_factory() as session, session.begin():
        session.add(User(id=user, telegram_id=user))
    yield user
    async with session_factory() as session, session.begin():
        await session.execute(delete(User).where(User.id == user))


def _send(
    key: str, status: SendStatus, now: datetime, *, age: timedelta, finished: bool
) -> dict[str, object]:
    at = now - age
    return {
        "send_key": key,
        "chat_id": 1,
        "priority": "bulk",
        "method": "sendMessage",
        "status": status,
        "created_at": at - timedelta(minutes=1),
        "attempted_at": at,
        "finished_at": at if finished else None,
    }


async def _seed_sends(sessions: async_sessionmaker[AsyncSession], now: datetime) -> dict[str, bool]:
    """Send ledger rows of every kind, young and old; returns key -> whether it must survive."""
    run = uuid.uuid4().hex[:8]
    rows = {
        f"{run}:sent-old-1": (SendStatus.SENT, 40 * DAY, True, False),
        f"{run}:sent-old-2": (SendStatus.SENT, 36 * DAY, True, False),
        f"{run}:failed-old": (SendStatus.FAILED, 50 * DAY, True, False),
        f"{run}:blocked-old": (SendStatus.BLOCKED, 40 * DAY, True, False),
        f"{run}:unknown-old": (SendStatus.UNKNOWN, 40 * DAY, True, False),
        f"{run}:pending-old": (SendStatus.PENDING, 40 * DAY, False, False),
        f"{run}:sent-young": (SendStatus.SENT, 34 * DAY, True, True),
        f"{run}:unknown-young": (SendStatus.UNKNOWN, 10 * DAY, True, True),
        f"{run}:pending-young": (SendStatus.PENDING, 2 * DAY, False, True),
        f"{run}:retry-young": (SendStatus.RETRY, 1 * DAY, True, True),
    }
    async with sessions() as session, session.begin():
        await session.execute(
            insert(TelegramSend),
            [_send(key, status, now, age=age, finished=done) for key, (status, age, done, _) in rows.items()],
        )
    return {key: keep for key, (*_, keep) in rows.items()}


async def _seed_broadcasts(sessions: async_sessionmaker[AsyncSession], now: datetime) -> dict[str, int]:
    """Three broadcasts: fanned out long ago, lately, and never; returns id -> recipients kept after."""
    run = uuid.uuid4().hex[:8]
    shapes = {
        f"{run}:old": (now - 40 * DAY, 5, 0),
        f"{run}:recent": (now - 2 * DAY, 2, 2),
        f"{run}:unfinished": (None, 2, 2),  # still fanning out, whatever its age
    }
    async with sessions() as session, session.begin():
        for broadcast_id, (fanned_out_at, recipients, _) in shapes.items():
            session.add(
                Broadcast(
                    broadcast_id=broadcast_id,
                    audience="all",
                    priority="bulk",
                    request={},
                    created_at=now - 60 * DAY,
                    fanned_out_at=fanned_out_at,
                )
            )
            await session.flush()
            session.add_all(
                BroadcastRecipient(
                    broadcast_id=broadcast_id, user_id=n, chat_id=n, status=RecipientStatus.QUEUED
                )
                for n in range(recipients)
            )
    return {broadcast_id: kept for broadcast_id, (*_, kept) in shapes.items()}


async def _seed_invite_links(
    sessions: async_sessionmaker[AsyncSession], user_id: int, now: datetime
) -> dict[str, bool]:
    """Links that expired 30, 8 and 6 days ago and one still valid; returns link -> must survive."""
    async with sessions() as session, session.begin():
        subscription = (
            await session.execute(
                insert(Subscription)
                .values(
                    user_id=user_id, plan=SubscriptionPlan.MONTHLY, start_at=now - 60 * DAY, end_at=now + DAY
                )
                .returning(Subscription.id)
            )
        ).scalar_one()
        links = {
            f"https://t.me/+{uuid.uuid4().hex}": (now - age, age > 7 * DAY)
            for age in (30 * DAY, 8 * DAY, 6 * DAY, -DAY)
        }
        await session.execute(
            insert(VipInviteLink),
            [
                {"user_id": user_id, "subscription_id": subscription, "invite_link": link, "expires_at": at}
                for link, (at, _) in links.items()
            ],
        )
    return {link: not gone for link, (_, gone) in links.items()}


async def test_cleanup_purges_sends_recipients_and_invite_links_past_retention_and_twice_is_a_no_op(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], user_id: int
) -> None:
    now = datetime.now(UTC)
    sends = await _seed_sends(session_factory, now)
    broadcasts = await _seed_broadcasts(session_factory, now)
    links = await _seed_invite_links(session_factory, user_id, now)

    topic = unique_topic("ticks")
    registry = new_registry()
    registry.scheduled(CLEANUP, topics=(topic,), retry_delays_s=())(scheduled_daily_cleanup)
    first, second = tick(CLEANUP, now), tick(CLEANUP, now)
    # Batches of 2: every purge needs several batches, so the loop over batches is exercised.
    services = Services(retention=Retention(batch_size=2))
    async with consuming(kafka, [registry.group], services), RawProducer(kafka) as producer:
        await producer.send_event(topic.name, first)
        first_run = await wait_for_run(session_factory, first.event_id)
        await producer.send_event(topic.name, second)
        second_run = await wait_for_run(session_factory, second.event_id)

    assert first_run.status is JobRunStatus.FINISHED, first_run.error
    # Other tests' old rows may be purged too, never fewer than this test's own.
    assert first_run.counts["telegram_sends_deleted"] >= 6
    assert first_run.counts["broadcast_recipients_deleted"] >= 5
    assert first_run.counts["invite_links_deleted"] >= 2
    assert second_run.status is JobRunStatus.FINISHED, second_run.error
    assert {name: second_run.counts[name] for name in NEW_COUNTS} == dict.fromkeys(NEW_COUNTS, 0)

    async with session_factory() as session:
        kept_sends = set(
            await session.scalars(select(TelegramSend.send_key).where(TelegramSend.send_key.in_(sends)))
        )
        recipients = {
            broadcast_id: len(
                (
                    await session.scalars(
                        select(BroadcastRecipient.user_id).where(
                            BroadcastRecipient.broadcast_id == broadcast_id
                        )
                    )
                ).all()
            )
            for broadcast_id in broadcasts
        }
        kept_broadcasts = set(
            await session.scalars(
                select(Broadcast.broadcast_id).where(Broadcast.broadcast_id.in_(broadcasts))
            )
        )
        kept_links = set(
            await session.scalars(select(VipInviteLink.invite_link).where(VipInviteLink.user_id == user_id))
        )
        await session.execute(delete(Broadcast).where(Broadcast.broadcast_id.in_(broadcasts)))
        await session.execute(delete(TelegramSend).where(TelegramSend.send_key.in_(sends)))
        await session.commit()

    assert kept_sends == {key for key, keep in sends.items() if keep}
    assert recipients == broadcasts
    assert kept_broadcasts == set(broadcasts)  # the broadcasts' own rows (their counts) stay
    assert kept_links == {link for link, keep in links.items() if keep}
