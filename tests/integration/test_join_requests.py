"""Channel join requests end to end: events in over real Kafka, rows in PostgreSQL, approvals at the
Bot API double; then the cleanup of decided requests."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import channels
from consumers.services import Services
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import ChannelJoinRequested
from dianabot_contracts.topics import TopicSpec
from dianabot_core.domain.settings import ChannelSettings
from dianabot_core.jobs import JobRunStatus
from dianabot_core.models import Channel, ChannelJoinRequest, ChannelKind, JoinRequestStatus
from dianabot_core.settings import Settings
from dianabot_double import TelegramDouble
from tests.integration.pipeline_support import RawProducer
from tests.integration.test_gamification_support import (
    consuming,
    new_registry,
    tick,
    unique_topic,
    wait_for_ledger,
    wait_for_run,
)
from tests.integration.test_telegram_support import fresh_chat_ids, sender_for, settings_for, telegram_double

APPROVAL = "scheduled_minutely_join_request_approval"
CLEANUP = "scheduled_daily_join_request_cleanup"
MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)


def channel_chat_id() -> int:
    """A channel id (the double treats ids <= -10^12 as channels) no other test uses."""
    return -random.randint(10**12 + 10**6, 2**52)


def fresh_slot() -> datetime:
    """A slot no other test's run was running at: the overlap policy skips a tick whose slot fell
    while another run of the job was running, and every test here runs the same job."""
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=random.randint(1, 3650))


@dataclass
class Stack:
    double: TelegramDouble
    producer: RawProducer
    events: TopicSpec
    ticks: TopicSpec
    handler: str
    sessions: async_sessionmaker[AsyncSession]

    async def request(self, chat_id: int, user: int, at: datetime, *, times: int = 1) -> EventEnvelope:
        envelope = EventEnvelope.wrap(
            ChannelJoinRequested(chat_id=chat_id, telegram_user_id=user, requested_at=at), producer="test"
        )
        for _ in range(times):
            await self.producer.send_event(self.events.name, envelope)
        return envelope

    async def run(self, job: str, slot: datetime) -> dict[str, int]:
        envelope = tick(job, slot)
        await self.producer.send_event(self.ticks.name, envelope)
        run = await wait_for_run(self.sessions, envelope.event_id)
        assert run.status is JobRunStatus.FINISHED, run.error
        return dict(run.counts)

    def approvals(self, chat_id: int, user: int) -> list[int]:
        return [
            r.status
            for r in self.double.requests_for("approveChatJoinRequest", chat_id=chat_id)
            if int(r.params.get("user_id", 0)) == user
        ]

    async def rows(self, *chat_ids: int) -> dict[tuple[int, int], ChannelJoinRequest]:
        async with self.sessions() as session:
            found = await session.scalars(
                select(ChannelJoinRequest).where(ChannelJoinRequest.chat_id.in_(chat_ids))
            )
            return {(r.chat_id, r.telegram_user_id): r for r in found}


@asynccontextmanager
async def join_request_stack(
    kafka: Settings, sessions: async_sessionmaker[AsyncSession], settings: ChannelSettings
) -> AsyncIterator[Stack]:
    events, ticks = unique_topic("channels"), unique_topic("ticks")
    module = f"ch{uuid.uuid4().hex[:8]}"
    registry = new_registry()
    channels.register_jobs(registry, ticks=(ticks,))
    groups = [channels.build_handlers(module=module, topic=events), registry.group]
    async with telegram_double() as double, sender_for(double) as sender:
        services = Services(telegram=sender, channels=settings)
        async with consuming(settings_for(double), groups, services), RawProducer(kafka) as producer:
            yield Stack(double, producer, events, ticks, f"dianabot.{module}.record_join_request", sessions)


@pytest.fixture
async def free_chat(session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[int]:
    chat_id = channel_chat_id()
    async with session_factory() as session, session.begin():
        session.add(Channel(telegram_chat_id=chat_id, kind=ChannelKind.FREE, title="free"))
    yield chat_id
    async with session_factory() as session, session.begin():
        await session.execute(delete(Channel).where(Channel.telegram_chat_id == chat_id))
        await session.execute(delete(ChannelJoinRequest).where(ChannelJoinRequest.chat_id == chat_id))


async def test_requests_are_recorded_once_and_approved_once_after_the_wait_young_ones_wait(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], free_chat: int
) -> None:
    slot = fresh_slot()
    other_chat = channel_chat_id()  # not a free channel (e.g. the VIP one): never approved here
    old, young, gone, elsewhere = fresh_chat_ids(4)
    settings = ChannelSettings(join_request_wait=5 * MINUTE)
    try:
        async with join_request_stack(kafka, session_factory, settings) as stack:
            stack.double.set_faults(no_join_request={gone})  # withdrawn or expired at Telegram
            requests = [
                await stack.request(free_chat, old, slot - 10 * MINUTE, times=2),  # redelivered
                await stack.request(free_chat, old, slot - 10 * MINUTE),  # the same request again
                await stack.request(free_chat, young, slot - 2 * MINUTE),
                await stack.request(free_chat, gone, slot - 6 * MINUTE),
                await stack.request(other_chat, elsewhere, slot - DAY),
            ]
            await wait_for_ledger(session_factory, stack.handler, len(requests))
            recorded = await stack.rows(free_chat, other_chat)

            first = await stack.run(APPROVAL, slot)
            again = await stack.run(APPROVAL, slot)  # another tick of the same minute: nothing left
            after_first = await stack.rows(free_chat, other_chat)
            later = await stack.run(APPROVAL, slot + 4 * MINUTE)  # the young one has waited 6 minutes
            final = await stack.rows(free_chat, other_chat)

            assert stack.approvals(free_chat, old) == [200]
            assert stack.approvals(free_chat, young) == [200]
            assert stack.approvals(free_chat, gone) == [400]
            assert stack.double.requests_for("approveChatJoinRequest", chat_id=other_chat) == []
            assert stack.double.api.member(free_chat, old).status == "member"
    finally:
        async with session_factory() as session, session.begin():
            await session.execute(delete(ChannelJoinRequest).where(ChannelJoinRequest.chat_id == other_chat))

    assert set(recorded) == {(free_chat, old), (free_chat, young), (free_chat, gone), (other_chat, elsewhere)}
    assert recorded[(free_chat, old)].requested_at == slot - 10 * MINUTE
    assert {r.status for r in recorded.values()} == {JoinRequestStatus.PENDING}

    assert first == {"approved": 1, "expired": 1, "failed": 0, "retrying": 0}
    assert again == {"approved": 0, "expired": 0, "failed": 0, "retrying": 0}
    assert after_first[(free_chat, young)].status is JoinRequestStatus.PENDING
    assert later == {"approved": 1, "expired": 0, "failed": 0, "retrying": 0}
    assert {key: row.status for key, row in final.items()} == {
        (free_chat, old): JoinRequestStatus.APPROVED,
        (free_chat, young): JoinRequestStatus.APPROVED,
        (free_chat, gone): JoinRequestStatus.EXPIRED,
        (other_chat, elsewhere): JoinRequestStatus.PENDING,
    }
    assert all(row.decided_at is not None for key, row in final.items() if key[0] == free_chat)


async def test_a_new_request_after_a_decision_is_pending_again_a_stale_event_is_not(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], free_chat: int
) -> None:
    slot = fresh_slot()
    [user] = fresh_chat_ids(1)
    async with join_request_stack(kafka, session_factory, ChannelSettings()) as stack:
        await stack.request(free_chat, user, slot - 10 * MINUTE)
        await wait_for_ledger(session_factory, stack.handler, 1)
        assert (await stack.run(APPROVAL, slot))["approved"] == 1
        await stack.request(free_chat, user, slot - 20 * MINUTE)  # an older request, delivered late
        await wait_for_ledger(session_factory, stack.handler, 2)
        stale = (await stack.rows(free_chat))[(free_chat, user)]
        await stack.request(free_chat, user, slot + MINUTE)  # the user left and asks again
        await wait_for_ledger(session_factory, stack.handler, 3)
        reopened = (await stack.rows(free_chat))[(free_chat, user)]

    assert (stale.status, stale.requested_at) == (JoinRequestStatus.APPROVED, slot - 10 * MINUTE)
    assert (reopened.status, reopened.requested_at, reopened.decided_at) == (
        JoinRequestStatus.PENDING,
        slot + MINUTE,
        None,
    )


async def test_cleanup_deletes_requests_decided_over_thirty_days_ago_in_batches_and_twice_is_a_no_op(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], free_chat: int
) -> None:
    slot = datetime.now(UTC)
    users = fresh_chat_ids(6)
    shapes = [  # (status, requested, decided, kept)
        (JoinRequestStatus.APPROVED, slot - 40 * DAY, slot - 40 * DAY, False),
        (JoinRequestStatus.EXPIRED, slot - 35 * DAY, slot - 31 * DAY, False),
        (JoinRequestStatus.DECLINED, slot - 31 * DAY, slot - 31 * DAY, False),
        (JoinRequestStatus.PENDING, slot - 45 * DAY, None, False),  # long expired at Telegram
        (JoinRequestStatus.APPROVED, slot - 31 * DAY, slot - 29 * DAY, True),
        (JoinRequestStatus.PENDING, slot - 2 * MINUTE, None, True),
    ]
    async with session_factory() as session, session.begin():
        await session.execute(
            insert(ChannelJoinRequest),
            [
                {
                    "chat_id": free_chat,
                    "telegram_user_id": user,
                    "status": status,
                    "requested_at": requested,
                    "decided_at": decided,
                }
                for user, (status, requested, decided, _) in zip(users, shapes, strict=True)
            ],
        )
    async with join_request_stack(kafka, session_factory, ChannelSettings(batch_size=2)) as stack:
        first = await stack.run(CLEANUP, slot)
        second = await stack.run(CLEANUP, slot)
        left = await stack.rows(free_chat)

    assert first["join_requests_deleted"] >= 4  # other tests' old rows may go too, never fewer
    assert second == {"join_requests_deleted": 0}
    assert set(left) == {(free_chat, u) for u, shape in zip(users, shapes, strict=True) if shape[3]}
