"""Fixtures on the real services started by `make up`: Kafka (KRaft) and PostgreSQL.

They fail, never skip, when a service is down: a skipped integration test would hide a defect.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.ext.asyncio import AsyncEngine

from dianabot_core.kafka import ensure_kafka_reachable
from dianabot_core.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def migrated_database(engine: AsyncEngine) -> AsyncEngine:
    """Every integration test runs against the test database migrated to head, even when it is run
    alone (a consumers process started by a test needs the ledger tables)."""
    return engine


@pytest.fixture(scope="session")
async def kafka(settings: Settings) -> Settings:
    await ensure_kafka_reachable(settings.kafka)
    return settings


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
