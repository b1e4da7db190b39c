"""On the real services: when PostgreSQL drops every connection of the service (a restart, a
failover), the next events are handled at once, each once, on their first attempt.

The engine does not ping each connection before use (three round trips per transaction on
asyncpg, a third of a batch's): the first statement on a dropped connection fails, SQLAlchemy
discards every pooled connection opened before, and the batch is handled again on new ones."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_contracts.topics import TopicSpec
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.settings import Settings
from tests.conftest import TEST_DATABASE_URL
from tests.integration.outbox_support import eventually
from tests.integration.pipeline_support import (
    RawProducer,
    effects_of,
    ensure_effects_table,
    record_effect,
    running_consumers,
)

pytestmark = pytest.mark.timeout(120)


async def _drop_service_connections(session_factory: async_sessionmaker[AsyncSession]) -> int:
    """Every connection of the service's engines; `session_factory` is the test's own."""
    async with session_factory() as session:
        dropped = await session.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'dianabot-jobs'"
            )
        )
        await session.commit()
    return int(dropped or 0)


async def test_events_after_the_database_dropped_every_connection_are_handled_once_first_time(
    kafka: Settings, new_topic: Callable[..., Awaitable[str]], engine: AsyncEngine
) -> None:
    # The test reads through an engine of its own, which the drop spares (another application_name).
    own = create_async_engine(
        TEST_DATABASE_URL, connect_args={"server_settings": {"application_name": "test"}}
    )
    session_factory = async_sessionmaker(own, expire_on_commit=False)
    source = TopicSpec(name=await new_topic(partitions=3), partitions=3, key="test")
    module = f"reconnect{uuid.uuid4().hex[:8]}"
    group = HandlerGroup(module)

    @group.handler(UserActivity, action="record", topics=(source,))
    async def record(event: UserActivity, ctx: HandlerContext) -> None:
        await record_effect(ctx, f"{module}.record", str(event.user_id), ctx.attempt)

    def wave(first: int) -> list[EventEnvelope]:
        return [
            EventEnvelope.wrap(UserActivity(user_id=u, at=datetime.now(UTC)), producer="test")
            for u in range(first, first + 30)
        ]

    async with running_consumers(kafka, [group]) as consumers:
        await ensure_effects_table(consumers.resources.session_factory)
        handler = f"{module}.record"
        before, after = wave(0), wave(1000)
        async with RawProducer(kafka) as producer:
            await producer.send_events(source.name, before)

            def handled(count: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    return len(await effects_of(session_factory, handler)) >= count

                return check

            await eventually(handled(len(before)), within=30)
            assert await _drop_service_connections(session_factory) >= 1
            # The suite's shared engine lost its pooled connections too: renew them for the tests
            # after this one (the service under test must cope on its own).
            await engine.dispose()
            await producer.send_events(source.name, after)
            # Well inside the first retry's 10 s delay: nothing went through a retry topic.
            await eventually(handled(len(before) + len(after)), within=8)

    effects = await effects_of(session_factory, handler)
    await own.dispose()
    assert sorted(e.event_id for e in effects) == sorted(e.event_id for e in before + after)
    assert {e.seq for e in effects} == {0}
