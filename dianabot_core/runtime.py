"""Process-level plumbing shared by the consumers and the scheduler: resources and start-up checks."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dianabot_core.db import create_engine, create_session_factory
from dianabot_core.kafka import KafkaUnreachableError, ensure_kafka_reachable
from dianabot_core.logs import configure_logging
from dianabot_core.metrics import GC_PAUSE_SECONDS
from dianabot_core.settings import ConfigError, Settings, load_settings

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


class GcPauseWatch:
    """Times every collection: a pause stops the event loop, so every send slot, heartbeat and
    Kafka poll of the process waits with it. Long ones are logged (they explain late sends)."""

    def __init__(self, log_over_s: float = 0.1) -> None:
        self._log_over_s = log_over_s
        self._started = 0.0
        # Resolved once: this runs on every collection (hundreds a minute in a busy consumer).
        self._observers = [GC_PAUSE_SECONDS.labels(str(generation)) for generation in range(3)]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        paused = time.perf_counter() - self._started
        self._observers[info["generation"]].observe(paused)
        if paused > self._log_over_s:
            logger.warning(
                "garbage collection paused the process for %.0f ms",
                paused * 1000,
                extra={"generation": info["generation"], "collected": info["collected"]},
            )


def watch_gc_pauses() -> None:
    """Install the pause watch once per process."""
    if not any(isinstance(callback, GcPauseWatch) for callback in gc.callbacks):
        gc.callbacks.append(GcPauseWatch())


def freeze_startup_objects() -> None:
    """Exclude what exists once the app has started (modules, settings, the broker, caches) from
    later collections: it lives as long as the process, and rescanning it is most of a full
    collection's pause (about 250 ms here, enough to cost sends their slots)."""
    watches = [callback for callback in gc.callbacks if isinstance(callback, GcPauseWatch)]
    for watch in watches:  # this one full collection is planned: not a pause worth a warning
        gc.callbacks.remove(watch)
    try:
        gc.collect()
        gc.freeze()
    finally:
        gc.callbacks.extend(watches)


@asynccontextmanager
async def resources_lifespan(resources: Resources, service: str) -> AsyncIterator[None]:
    await preflight(resources)
    watch_gc_pauses()
    try:
        yield
    finally:
        await resources.engine.dispose()
        logger.info("%s stopped", service)
