"""Process-level plumbing shared by the consumers and the scheduler: resources and start-up checks."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.db import create_engine, create_session_factory
from core.kafka import KafkaUnreachableError, ensure_kafka_reachable
from core.logs import configure_logging
from core.settings import ConfigError, Settings, load_settings

logger = logging.getLogger("dianabot")


class DatabaseUnreachableError(RuntimeError):
    """Start-up could not reach PostgreSQL; the message names the URL without its password."""


@dataclass(frozen=True)
class Resources:
    """Long-lived objects one process shares between its handlers; built once, closed once."""

    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]


def exit_with_one_line(message: str, code: int = 1) -> None:
    """Stop the process with a single readable line, not a traceback."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    # os._exit: the CLI's event loop and task groups would otherwise wrap SystemExit in tracebacks.
    os._exit(code)


def settings_or_exit(loader: Callable[[], Settings] = load_settings) -> Settings:
    try:
        settings = loader()
    except ConfigError as error:
        exit_with_one_line(str(error), code=2)
        raise  # unreachable; keeps type checkers honest
    configure_logging(settings.telemetry.log_level, settings.telemetry.log_json)
    return settings


def build_resources(settings: Settings) -> Resources:
    engine = create_engine(settings.database)
    return Resources(settings=settings, engine=engine, session_factory=create_session_factory(engine))


async def ensure_database_reachable(resources: Resources) -> None:
    try:
        async with resources.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:
        raise DatabaseUnreachableError(
            f"PostgreSQL is unreachable at {resources.settings.database.safe_url()}: {type(error).__name__}"
        ) from None


async def preflight(resources: Resources) -> None:
    """Fail fast, with one line, when a dependency is down at start-up."""
    aiokafka_logger = logging.getLogger("aiokafka")
    level = aiokafka_logger.level
    aiokafka_logger.setLevel(logging.CRITICAL)  # its per-attempt errors would bury the one line below
    try:
        await ensure_kafka_reachable(resources.settings.kafka)
        await ensure_database_reachable(resources)
    except (KafkaUnreachableError, DatabaseUnreachableError) as error:
        exit_with_one_line(f"startup failed: {error}")
    finally:
        aiokafka_logger.setLevel(level)


@asynccontextmanager
async def resources_lifespan(resources: Resources, service: str) -> AsyncIterator[None]:
    await preflight(resources)
    try:
        yield
    finally:
        await resources.engine.dispose()
        logger.info("%s stopped", service)
