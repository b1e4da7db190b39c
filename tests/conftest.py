"""Settings shared by every test layer; real-service fixtures live in integration/ and e2e/."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from alembic import command
from alembic.config import Config
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dianabot_core.db import create_engine, create_session_factory
from dianabot_core.settings import DatabaseSettings, KafkaSettings, Settings, TelegramSettings

TEST_DATABASE_URL = os.environ.get(
    "DIANABOT_TEST_DATABASE_URL",
    "postgresql+asyncpg://dianabot:dianabot@127.0.0.1:{port}/dianabot_test".format(
        port=os.environ.get("PG_PORT", "5432")
    ),
)
TEST_BOOTSTRAP = os.environ.get(
    "DIANABOT_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:{}".format(os.environ.get("KAFKA_PORT", "9092"))
)


def make_settings(**overrides: object) -> Settings:
    """Settings for tests: the devstack's Kafka, the test database, the Bot API double's address."""
    values: dict[str, object] = {
        "kafka": KafkaSettings(bootstrap_servers=TEST_BOOTSTRAP, connect_timeout_s=5),
        "database": DatabaseSettings(url=SecretStr(TEST_DATABASE_URL)),
        "telegram": TelegramSettings(
            bot_token=SecretStr("123456:test-token"),
            api_base_url="http://127.0.0.1:8081",
            admin_chat_id=-1000000000001,
        ),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()


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
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    await reset_database(settings)
    engine = create_engine(settings.database)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


def _open_kafka_connections() -> dict[int, str]:
    from aiokafka.conn import AIOKafkaConnection

    return {
        id(o): str(o._client_id)
        for o in gc.get_objects()
        if isinstance(o, AIOKafkaConnection) and o.connected()
    }


_OPENED_BY: dict[int, str] = {}  # open Kafka connection -> the test module that left it open


@pytest.fixture(scope="module", autouse=True)
def _note_kafka_connections_left_open(request: pytest.FixtureRequest) -> Iterator[None]:
    before = _open_kafka_connections()
    yield
    for key, client in _open_kafka_connections().items():
        if key not in before:
            _OPENED_BY.setdefault(key, f"{request.module.__name__} ({client})")


@pytest.fixture(scope="session", autouse=True)
async def _kafka_clients_left_open(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Close, and name, the Kafka connections tests left open, while the event loop still runs.

    Left to the garbage collector after the loop has closed, each one's socket and stream writer
    are reported as unraisable ResourceWarnings that fail the session far from their cause. Under
    a heavily loaded machine a few test modules that start and stop consumer brokers have left
    some open; which ones is printed here (see the README's open findings) instead of failing.
    """
    from aiokafka.conn import AIOKafkaConnection

    yield
    gc.collect()
    open_now = [o for o in gc.get_objects() if isinstance(o, AIOKafkaConnection) and o.connected()]
    if not open_now:
        return
    modules = sorted({_OPENED_BY.get(id(c), "unknown module") for c in open_now})
    # Stop the clients still running first: their background tasks would open new connections.
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    running = [
        o
        for o in gc.get_objects()
        if isinstance(o, AIOKafkaConsumer | AIOKafkaProducer) and not getattr(o, "_closed", True)
    ]
    for client in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.stop(), timeout=10)
    open_now = [o for o in gc.get_objects() if isinstance(o, AIOKafkaConnection) and o.connected()]
    for connection in open_now:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), timeout=5)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"stopped {len(running)} Kafka clients and closed {len(open_now)} connections left open by: "
            f"{', '.join(modules)}",
            yellow=True,
        )
