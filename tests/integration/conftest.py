"""Fixtures on the real services started by `make up`: Kafka (KRaft) and PostgreSQL.

They fail, never skip, when a service is down: a skipped integration test would hide a defect.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.db import create_engine, create_session_factory
from core.kafka import ensure_kafka_reachable
from core.settings import Settings


def alembic_config(database_url: str) -> Config:
    config = Config("alembic.ini")
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


async def reset_database(settings: Settings) -> None:
    """An empty schema migrated to head: what a fresh deployment has."""
    engine = create_engine(settings.database)
    async with engine.begin() as connection:
        await connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await connection.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
    config = alembic_config(settings.database.url.get_secret_value())
    # env.py runs its own event loop, so it cannot run on this one.
    await asyncio.to_thread(command.upgrade, config, "head")


@pytest.fixture(scope="session")
async def kafka(settings: Settings) -> Settings:
    await ensure_kafka_reachable(settings.kafka)
    return settings


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    await reset_database(settings)
    engine = create_engine(settings.database)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


@pytest.fixture(scope="session")
async def admin(kafka: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka.kafka.bootstrap_servers)
    await client.start()
    yield client
    await client.close()


@pytest.fixture
def new_topic(admin: AIOKafkaAdminClient) -> Callable[..., Awaitable[str]]:
    """Creates a topic unique to the test, so tests never read each other's messages."""

    async def create(partitions: int = 3, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        return name

    return create
