"""Helpers for the gamification and economy tests (this module holds no tests).

The jobs scan whole tables, so each test lives in its own random stretch of the far future (the years
2200 to 2900: other suites use the past), where only its own users are active, and deletes its users,
missions and channels afterwards. Jobs are driven by ``SchedulerTick`` events on a tick topic of the
test's own; handlers by events on an event topic of its own. Emitted events are read from the outbox.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.app import build_consumers
from consumers.jobs import ScheduledJobs
from consumers.services import Services
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import SchedulerTick
from dianabot_contracts.topics import TopicSpec
from dianabot_core.jobs import JobRun, JobRunStatus
from dianabot_core.models import Channel, Mission, MissionType, OutboxEvent, ProcessedEvent, User, UserState
from dianabot_core.pipeline.handlers import HandlerGroup
from dianabot_core.settings import Settings

FINAL = frozenset({JobRunStatus.FINISHED, JobRunStatus.FAILED, JobRunStatus.SKIPPED})


def era() -> datetime:
    """A random hour in the far future: one test's own stretch of time."""
    start = datetime(2200, 1, 1, tzinfo=UTC) + timedelta(days=random.randint(0, 700 * 365))
    return start.replace(hour=random.randint(0, 23))


def unique_topic(prefix: str, partitions: int = 3) -> TopicSpec:
    return TopicSpec(name=f"test.{prefix}.{uuid.uuid4().hex[:10]}", partitions=partitions, key="k")


def new_registry() -> ScheduledJobs:
    return ScheduledJobs(HandlerGroup(f"jobs{uuid.uuid4().hex[:8]}"))


@asynccontextmanager
async def consuming(
    settings: Settings, groups: Iterable[HandlerGroup], services: Services | None = None
) -> AsyncIterator[None]:
    consumers = build_consumers(settings, groups=list(groups), services=services)
    await consumers.declare_topics()
    try:
        async with consumers.broker:
            await consumers.broker.start()
            yield
    finally:
        await consumers.resources.engine.dispose()


def tick(job: str, slot: datetime) -> EventEnvelope:
    return EventEnvelope.wrap(SchedulerTick(job=job, slot=slot, kind="manual"), producer="test")


async def wait_for_run(
    sessions: async_sessionmaker[AsyncSession], event_id: uuid.UUID, within: float = 30
) -> JobRun:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with sessions() as session:
            run = await session.scalar(select(JobRun).where(JobRun.event_id == event_id))
        if run is not None and run.status in FINAL:
            return run
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run of {event_id} not finished in time: {run}")
        await asyncio.sleep(0.1)


async def wait_for_ledger(
    sessions: async_sessionmaker[AsyncSession], consumer: str, count: int, within: float = 30
) -> None:
    """Wait until ``consumer`` has handled ``count`` distinct events (its ledger rows)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with sessions() as session:
            found = len(
                (
                    await session.scalars(
                        select(ProcessedEvent.event_id).where(ProcessedEvent.consumer == consumer)
                    )
                ).all()
            )
        if found >= count:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{consumer}: {found} events handled, expected {count}")
        await asyncio.sleep(0.1)


async def outbox_caused_by(
    sessions: async_sessionmaker[AsyncSession], cause: uuid.UUID, event_type: str
) -> list[OutboxEvent]:
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboxEvent)
            .where(
                OutboxEvent.event_type == event_type, OutboxEvent.body["causation_id"].astext == str(cause)
            )
            .order_by(OutboxEvent.id)
        )
        return list(rows)


async def outbox_for_users(
    sessions: async_sessionmaker[AsyncSession], user_ids: Iterable[int], event_type: str
) -> list[OutboxEvent]:
    keys = [f"user:{u}" for u in user_ids]
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.event_type == event_type, OutboxEvent.key.in_(keys))
            .order_by(OutboxEvent.id)
        )
        return list(rows)


class World:
    """Users, missions and channels one test created; ``cleanup`` deletes them (cascading)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.user_ids: list[int] = []
        self.mission_ids: list[int] = []
        self.channel_ids: list[int] = []

    async def user(
        self,
        *,
        last_active_at: datetime | None,
        state: UserState = UserState.FREE,
        blocked: bool = False,
        username: str | None = None,
        language: str | None = "es",
    ) -> int:
        user_id = random.randint(10**12, 2**62)
        async with self.sessions() as session, session.begin():
            session.add(
                User(
                    id=user_id,
                    telegram_id=user_id,
                    username=username,
                    language_code=language,
                    state=state,
                    last_active_at=last_active_at,
                    bot_blocked_at=last_active_at if blocked else None,
                )
            )
        self.user_ids.append(user_id)
        return user_id

    async def mission(self, mission_type: MissionType, besitos: int, *, active: bool = True) -> Mission:
        key = f"m{uuid.uuid4().hex[:12]}"
        mission = Mission(
            key=key,
            title=f"Mission {key}",
            mission_type=mission_type,
            rewards={"besitos": besitos},
            is_active=active,
        )
        async with self.sessions() as session, session.begin():
            session.add(mission)
        self.mission_ids.append(mission.id)
        return mission

    async def channel(self, kind: Any) -> int:
        chat_id = -random.randint(10**12 + 10**6, 2**52)
        channel = Channel(telegram_chat_id=chat_id, kind=kind, title="test")
        async with self.sessions() as session, session.begin():
            session.add(channel)
        self.channel_ids.append(channel.id)
        return chat_id

    async def cleanup(self) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(delete(User).where(User.id.in_(self.user_ids)))
            await session.execute(delete(Mission).where(Mission.id.in_(self.mission_ids)))
            await session.execute(delete(Channel).where(Channel.id.in_(self.channel_ids)))
