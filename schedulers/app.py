"""The scheduler's composition root: ``faststream run schedulers.app:app``.

Run several replicas: one leads (PostgreSQL advisory lock) and emits ``scheduler.tick`` events,
the others stand by and take over within seconds when it dies. ``create_app`` reads nothing
global: tests and the benchmark pass their own settings, scheduler settings and clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

from faststream import FastStream
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from dianabot_contracts.topics import SCHEDULER_TICKS
from dianabot_core.clock import Clock, SystemClock
from dianabot_core.health import HealthServer, HealthServerError, broker_check, database_check
from dianabot_core.kafka import admin_client, create_broker
from dianabot_core.outbox import OutboxRelay
from dianabot_core.pipeline.consumer import TopicDeclaration, declare_topics
from dianabot_core.publisher import EventPublisher
from dianabot_core.runtime import (
    Resources,
    build_resources,
    exit_with_one_line,
    resources_lifespan,
    settings_or_exit,
)
from dianabot_core.schedule.cron import CronSchedule
from dianabot_core.schedule.settings import SchedulerSettings
from dianabot_core.settings import Settings
from dianabot_core.telemetry import instrument_engine, kafka_middlewares, setup_tracing
from schedulers.leader import AdvisoryLock
from schedulers.planning import ScheduledJob
from schedulers.service import SchedulerService
from schedulers.state import PRODUCER, PgTickStore

logger = logging.getLogger("dianabot.scheduler")


def scheduled_jobs(settings: Settings, scheduler: SchedulerSettings) -> list[ScheduledJob]:
    """The enabled jobs of the table, with their schedules in the bot's timezone."""
    jobs = [job for job in scheduler.resolve_jobs() if job.enabled]
    return [ScheduledJob(job, CronSchedule(job.cron, settings.tz)) for job in jobs]


def build_service(
    settings: Settings,
    scheduler: SchedulerSettings,
    resources: Resources,
    publisher: EventPublisher,
    clock: Clock | None = None,
    *,
    provider: TracerProvider | None = None,
) -> SchedulerService:
    relay = OutboxRelay(
        resources.session_factory, publisher, topics={scheduler.tick_topic}, ack_timeout_s=10.0
    )
    return SchedulerService(
        jobs=scheduled_jobs(settings, scheduler),
        settings=scheduler,
        store=PgTickStore(resources.session_factory, topic=scheduler.tick_topic),
        lock=AdvisoryLock(
            settings.database.url.get_secret_value(),
            scheduler.lock_key,
            session_timeout_s=scheduler.lock_session_timeout_s,
        ),
        relay=relay,
        clock=clock or SystemClock(),
        tracer=trace.get_tracer("dianabot.scheduler", tracer_provider=provider),
    )


def create_app(
    settings: Settings, scheduler: SchedulerSettings | None = None, *, clock: Clock | None = None
) -> FastStream:
    scheduler = scheduler or settings.scheduler
    # Traced as the consumers are: OTLP export when DIANABOT_TELEMETRY__OTLP_ENDPOINT is set, the
    # tick's trace context on its record, SQL spans beneath the tick's span.
    provider = setup_tracing(settings.telemetry)
    resources = build_resources(settings)
    instrument_engine(resources.engine, provider)
    broker = create_broker(
        settings.kafka, logger=logging.getLogger("dianabot.broker"), middlewares=kafka_middlewares(provider)
    )
    publisher = EventPublisher(broker, PRODUCER)
    service = build_service(settings, scheduler, resources, publisher, clock, provider=provider)
    health = HealthServer(
        scheduler.http_port, {"database": database_check(resources.engine), "kafka": broker_check(broker)}
    )

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with resources_lifespan(resources, "scheduler"):
            await _declare_tick_topic(settings, scheduler.tick_topic)
            yield

    app = FastStream(broker, lifespan=lifespan, logger=logger)
    app.context.set_global("resources", resources)

    @app.after_startup
    async def start_and_announce() -> None:
        service.start()
        try:
            await health.start()
        except HealthServerError as error:
            exit_with_one_line(f"startup failed: {error}")
        logger.info(
            "scheduler ready",
            extra={
                "kafka": settings.kafka.bootstrap_servers,
                "timezone": settings.timezone,
                "jobs": [job.name for job in service.jobs],
            },
        )

    @app.on_shutdown
    async def stop_service() -> None:
        await health.stop()
        await service.stop()

    return app


async def _declare_tick_topic(settings: Settings, topic: str) -> None:
    """Declare the tick topic (partitions, retention) so it is never auto-created with one partition."""
    admin = admin_client(settings.kafka)
    await admin.start()
    try:
        await declare_topics(
            admin,
            [TopicDeclaration(topic, SCHEDULER_TICKS.partitions, SCHEDULER_TICKS.retention_ms)],
            settings.kafka.topic_replication_factor,
        )
    finally:
        await admin.close()


@cache
def _default_app() -> FastStream:
    return create_app(settings_or_exit())


def __getattr__(name: str) -> FastStream:
    # Built on first access (by `faststream run schedulers.app:app`), not at import time.
    if name == "app":
        return _default_app()
    raise AttributeError(name)
