"""The monitoring tests' stack (this module holds no tests): the heartbeat and the alert handler on
real Kafka with topics of their own, incidents in PostgreSQL, messages in the Bot API double."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import monitoring
from consumers.jobs import ScheduledJobs
from consumers.services import Monitoring, Services
from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import SchedulerTick
from dianabot_contracts.topics import TopicSpec
from dianabot_core.incidents import AlertIncident
from dianabot_core.jobs import JobRun, JobRunStatus
from dianabot_core.models import ProcessedEvent
from dianabot_core.monitoring_settings import MonitoringSettings
from dianabot_core.pipeline.handlers import HandlerGroup
from dianabot_core.schedule.jobs import JobDefinition
from dianabot_core.settings import Settings
from dianabot_core.telegram.sender import TelegramSender
from dianabot_double import TelegramDouble
from tests.integration.pipeline_support import RawProducer
from tests.integration.test_telegram_support import (
    fresh_chat_ids,
    sender_for,
    settings_for,
    telegram_double,
    wait_for,
)
from tests.integration.test_vip_support import running


@dataclass(frozen=True)
class SwitchableServices(Services):
    """The stack's services, whose ``monitoring`` each test switches to its own while the consumers run."""

    watches: list[Monitoring] = field(default_factory=list)

    @property
    def monitoring(self) -> Monitoring:
        return self.watches[-1]


@dataclass
class Stack:
    """The monitoring jobs and the alert handler running on topics of their own, with the double."""

    double: TelegramDouble
    sender: TelegramSender
    settings: Settings
    producer: RawProducer
    sessions: async_sessionmaker[AsyncSession]
    services: SwitchableServices
    alerts: TopicSpec
    ticks: TopicSpec
    module: str
    base: Monitoring

    @property
    def handler(self) -> str:
        return f"dianabot.{self.module}.notify_admin"

    def watch(self, jobs: tuple[JobDefinition, ...] = (), tz: str = "UTC", **settings: Any) -> Monitoring:
        """This test's own Monitoring from now on: its admin chat, jobs and settings (by default
        no group's lag, no parked rows or stored dead letters, the stack's own dead-letter topic)."""
        watching = replace(
            self.base,
            settings=self.base.settings.model_copy(update=settings),
            admin_chat_id=fresh_chat_ids(1)[0],
            jobs=jobs,
            timezone=ZoneInfo(tz),
        )
        self.services.watches.append(watching)
        return watching

    def texts(self) -> list[str]:
        chat = self.services.monitoring.admin_chat_id
        return [m.text or "" for m in self.double.messages_for(chat)]

    async def publish(self, payload: EventPayload, topic: TopicSpec) -> EventEnvelope:
        envelope = EventEnvelope.wrap(payload, producer="test")
        await self.producer.send_event(topic.name, envelope)
        return envelope

    async def run_job(self, job: str, slot: datetime) -> EventEnvelope:
        """Tick the job and wait until its run finished."""
        tick = await self.publish(SchedulerTick(job=job, slot=slot, kind="manual"), self.ticks)

        async def finished() -> bool:
            async with self.sessions() as session:
                run = await session.scalar(select(JobRun).where(JobRun.event_id == tick.event_id))
            assert run is None or run.status is not JobRunStatus.FAILED, run.error
            return run is not None and run.status is JobRunStatus.FINISHED

        await wait_for(finished, within=60)
        return tick

    async def wait_handled(self, *event_ids: uuid.UUID) -> None:
        """Until the alert handler committed every one of these events."""

        async def done() -> bool:
            async with self.sessions() as session:
                rows = await session.scalars(
                    select(ProcessedEvent.event_id).where(
                        ProcessedEvent.consumer == self.handler, ProcessedEvent.event_id.in_(event_ids)
                    )
                )
                return len(set(rows)) == len(set(event_ids))

        await wait_for(done, within=60)


@asynccontextmanager
async def monitoring_stack(
    kafka: Settings, admin: AIOKafkaAdminClient, session_factory: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Stack]:
    """The stack of a test module: its own topics, consumer groups and Bot API double."""
    run = uuid.uuid4().hex[:10]
    # One partition: the alerts keep their order, as on the real (one-partition) alerts topic.
    alerts, ticks, dead_letters = (
        TopicSpec(name=f"test.mon.{run}.{name}", partitions=1, key="test")
        for name in ("alerts", "ticks", "dead_letters")
    )
    await admin.create_topics(
        [NewTopic(t.name, num_partitions=1, replication_factor=1) for t in (alerts, ticks, dead_letters)]
    )
    module = f"mon{run}"
    registry = ScheduledJobs(HandlerGroup(f"{module}j"))
    monitoring.register_jobs(registry, alerts=alerts, ticks=(ticks,))
    groups = [monitoring.build_handlers(module=module, topic=alerts, retry_delays_s=(1.0,)), registry.group]
    base = Monitoring(
        MonitoringSettings(
            lag_group_prefix=f"test.mon.{run}.none.",
            dead_letter_topic=dead_letters.name,
            parked_topic_prefix=f"test.mon.{run}.none.",
            stored_dead_letter_handler_prefix=f"test.mon.{run}.none.",
        ),
        kafka.kafka,
        0,
        (),
        ZoneInfo("UTC"),
    )
    async with telegram_double() as double:
        settings = settings_for(double)
        async with sender_for(double) as sender, RawProducer(settings) as producer:
            services = SwitchableServices(telegram=sender, watches=[base])
            async with running(settings, groups, services):
                yield Stack(
                    double, sender, settings, producer, session_factory, services, alerts, ticks, module, base
                )


async def forget_incidents(stack: Stack, run_id: str) -> None:
    """Close out a test's incidents (their keys carry its run id)."""
    async with stack.sessions() as session, session.begin():
        await session.execute(delete(AlertIncident).where(AlertIncident.alert_key.contains(run_id)))


async def settle() -> None:
    """Time for anything that should not happen to show up."""
    await asyncio.sleep(1.5)
