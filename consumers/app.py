"""The consumers' composition root: ``faststream run consumers.app:app``.

``create_app`` reads nothing global: it takes settings, builds the broker, the long-lived
resources, the handlers' ``Services`` (``consumers/services.py``: once per process) and every
handler's consumers, and closes everything in the lifespan. Tests call ``build_consumers`` or
``create_app`` with their own settings, handler groups and ``Services`` (clock, sender, sections).
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.specification import AsyncAPI

from consumers import monitoring
from consumers.registry import HANDLER_GROUPS
from consumers.services import Monitoring, Services
from dianabot_core.health import HealthServer, HealthServerError, broker_check, database_check
from dianabot_core.kafka import admin_client, create_broker
from dianabot_core.lag import lag_metrics_updater
from dianabot_core.outbox import OutboxRelay
from dianabot_core.pipeline.consumer import (
    TopicDeclaration,
    declare_topics,
    document_topics,
    subscribe_handlers,
    topic_declarations,
)
from dianabot_core.pipeline.handlers import PRODUCER, HandlerGroup
from dianabot_core.pipeline.routing import FailureRouter
from dianabot_core.pipeline.runner import PipelineDeps
from dianabot_core.publisher import EventPublisher
from dianabot_core.runtime import (
    Resources,
    build_resources,
    exit_with_one_line,
    freeze_startup_objects,
    resources_lifespan,
    settings_or_exit,
)
from dianabot_core.settings import Settings
from dianabot_core.telegram.sender import TelegramSender
from dianabot_core.telemetry import instrument_engine, kafka_middlewares, setup_tracing

logger = logging.getLogger("dianabot.consumers")

DISTRIBUTION = "dianabot-jobs"
ASYNCAPI_TITLE = "DianaBot jobs"
ASYNCAPI_DESCRIPTION = (
    "The background-job service of DianaBot. Domain events travel on the Kafka topics of the "
    "registry (contracts/dianabot_contracts/topics.py); each record's value is one event envelope "
    "(JSON: event_id, event_type, schema_version, occurred_at, producer, correlation and causation "
    "ids, key, payload), its key the aggregate id, and event_id and event_type are also headers. "
    "Bot services publish (directly or through the transactional outbox), the scheduler publishes "
    "scheduler.tick, and handlers publish the events they cause. Every handler reads its topics as "
    "its own consumer group, idempotently by event id; transient failures go to retry topics read "
    "by one shared retry group per source topic, and exhausted or permanent failures to "
    "dianabot.dead_letters."
)


def service_version() -> str:
    """The installed distribution's version; from a source tree that was never installed, pyproject's."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        if pyproject.is_file():
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        return "0+unknown"


def asyncapi_specification() -> AsyncAPI:
    """The AsyncAPI document's header: the service's name, the distribution's version, a summary."""
    return AsyncAPI(title=ASYNCAPI_TITLE, version=service_version(), description=ASYNCAPI_DESCRIPTION)


@dataclass
class Consumers:
    """Everything one consumer process runs: the broker with every handler's consumers, and the relay."""

    settings: Settings
    resources: Resources
    broker: KafkaBroker
    relay: OutboxRelay
    declarations: list[TopicDeclaration]
    handler_names: list[str]
    _stop_relay: asyncio.Event = field(default_factory=asyncio.Event)
    _relay_task: asyncio.Task[None] | None = None

    async def declare_topics(self) -> list[str]:
        admin = admin_client(self.settings.kafka)
        await admin.start()
        try:
            return await declare_topics(
                admin, self.declarations, self.settings.kafka.topic_replication_factor
            )
        finally:
            await admin.close()

    def start_relay(self) -> None:
        self._stop_relay.clear()
        self._relay_task = asyncio.create_task(self.relay.run(self._stop_relay), name="outbox-relay")

    async def stop_relay(self) -> None:
        self._stop_relay.set()
        if self._relay_task is not None:
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._relay_task, timeout=10)
            self._relay_task = None


def build_consumers(
    settings: Settings, *, groups: Iterable[HandlerGroup] = HANDLER_GROUPS, services: Services | None = None
) -> Consumers:
    """The consumers of ``groups``; their handlers get ``services`` (defaults, no sender, when None)."""
    services = services or Services()
    provider = setup_tracing(settings.telemetry)
    resources = build_resources(settings)
    instrument_engine(resources.engine, provider)
    broker = create_broker(
        settings.kafka, logger=logging.getLogger("dianabot.broker"), middlewares=kafka_middlewares(provider)
    )
    deps = PipelineDeps(
        session_factory=resources.session_factory,
        router=FailureRouter(broker),
        clock=services.clock,
        producer=PRODUCER,
        services=services,
    )
    router = KafkaRouter()
    declarations = topic_declarations()
    specs = [spec for group in groups for spec in group.specs]
    declarations += subscribe_handlers(
        router,
        specs,
        deps,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
        group_instance_id=settings.kafka.group_instance_id,
    )
    names = [spec.name for spec in specs]
    document_topics(router)
    broker.include_router(router)
    relay = OutboxRelay(
        resources.session_factory,
        EventPublisher(broker, PRODUCER),
        max_record_bytes=settings.kafka.max_record_bytes,
    )
    return Consumers(settings, resources, broker, relay, declarations, names)


def production_services(settings: Settings) -> Services:
    """What handlers use: the settings tree's sections, the one Telegram sender, monitoring's watch."""
    return Services.from_settings(
        settings,
        telegram=TelegramSender.create(settings, settings.sender),
        watching=Monitoring(
            settings.monitoring,
            settings.kafka,
            settings.telegram.admin_chat_id,
            # The job table as the scheduler runs it (enabled flags, cron overrides).
            monitoring.handled_jobs(settings.scheduler.resolve_jobs()),
            settings.tz,
        ),
    )


def create_app(
    settings: Settings, *, groups: Iterable[HandlerGroup] = HANDLER_GROUPS, services: Services | None = None
) -> FastStream:
    # Built only when the caller brings none: one sender per process, and no settings read for nothing.
    services = services or production_services(settings)
    consumers = build_consumers(settings, groups=groups, services=services)
    sender = services.telegram
    health = HealthServer(
        settings.telemetry.http_port,
        {"database": database_check(consumers.resources.engine), "kafka": broker_check(consumers.broker)},
        before_scrape=lag_metrics_updater(settings.kafka),
    )
    watchdog = (
        monitoring.build_watchdog(consumers.resources.engine, services.watching, sender)
        if services.watching is not None and sender is not None
        else None
    )
    stop_watchdog = asyncio.Event()
    watchdog_tasks: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with resources_lifespan(consumers.resources, "consumers"):
            created = await consumers.declare_topics()
            if created:
                logger.info("declared %d topics", len(created), extra={"topics": created})
            yield

    app = FastStream(
        consumers.broker, lifespan=lifespan, logger=logger, specification=asyncapi_specification()
    )

    @app.after_startup
    async def start_relay_and_announce() -> None:
        freeze_startup_objects()
        consumers.start_relay()
        if watchdog is not None:
            # The pipeline cannot report its own database or Kafka being down: this task can.
            watchdog_tasks.append(asyncio.create_task(watchdog.run(stop_watchdog), name="watchdog"))
        try:
            await health.start()
        except HealthServerError as error:
            exit_with_one_line(f"startup failed: {error}")
        logger.info(
            "consumers ready",
            extra={
                "kafka": settings.kafka.bootstrap_servers,
                "database": settings.database.safe_url(),
                "handlers": consumers.handler_names,
            },
        )

    @app.on_shutdown
    async def stop_relay() -> None:
        stop_watchdog.set()
        for task in watchdog_tasks:
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=10)
        await health.stop()
        await consumers.stop_relay()

    @app.after_shutdown
    async def close_sender() -> None:
        # After the broker stopped: it waits for handlers in flight, which may be mid-send.
        if sender is not None:
            await sender.close()

    return app


@cache
def _default_app() -> FastStream:
    return create_app(settings_or_exit())


def __getattr__(name: str) -> FastStream:
    # `faststream run consumers.app:app` builds the app on first access, not at import time,
    # so tests and tools can import this module without settings.
    if name == "app":
        return _default_app()
    raise AttributeError(name)
