"""The VIP stack for end-to-end tests (this module holds no tests): real Kafka, PostgreSQL, the double.

One stack per test module: the subscription and content handlers and their jobs run on topics of
their own (events, ticks, alerts), with the outbox relay, the Telegram sender and the Bot API double
in-process. Jobs are driven by publishing ``SchedulerTick`` events onto the stack's tick topic; a
rival consumer group runs the publishing job on ticks of its own, so a test can make two
publishers compete, and a second ``grant_access`` consumer sees every start and renewal again.

The jobs scan whole tables, so each test lives in its own random stretch of the distant past (the
years 200 to 900: the domain tests use 1000 to 1900) and deletes its users and channels afterwards.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import delete, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import content, subscriptions
from consumers.app import Consumers, build_consumers
from consumers.jobs import ScheduledJobs
from consumers.services import Services
from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import SchedulerTick, SubscriptionRenewed, SubscriptionStarted
from dianabot_contracts.topics import TopicSpec
from dianabot_core.domain.settings import ContentSettings, SubscriptionSettings
from dianabot_core.jobs import JobRun, JobRunStatus
from dianabot_core.models import (
    Channel,
    ChannelKind,
    OutboxEvent,
    ProcessedEvent,
    Subscription,
    SubscriptionPlan,
    SubscriptionStatus,
    User,
)
from dianabot_core.pipeline.handlers import HandlerGroup
from dianabot_core.settings import Settings
from dianabot_core.telegram.sender import TelegramSender
from dianabot_double import TelegramDouble
from tests.integration.pipeline_support import RawProducer
from tests.integration.test_telegram_support import (
    ChatUser,
    create_users,
    sender_for,
    settings_for,
    telegram_double,
    wait_for,
)

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MADRID = ZoneInfo("Europe/Madrid")
VIP_CHAT_ID = -1_000_000_000_777
RENEW_URL = "https://t.me/dianabot_double?start=renew"
REMINDERS = "scheduled_hourly_subscription_expiry_reminders"
EXPIRY = "scheduled_hourly_subscription_expiry"
ARCHIVE = "scheduled_daily_subscription_archive"
PUBLISHING = "scheduled_minutely_post_publishing"


def era() -> datetime:
    """A random hour between the years 200 and 900: one test's own stretch of time."""
    return datetime(200, 1, 1, tzinfo=UTC) + timedelta(days=random.randint(0, 700 * 365))


def channel_chat_id() -> int:
    """A channel id (the double treats ids <= -10^12 as channels) no other test uses."""
    return -random.randint(10**12 + 10**6, 2**52)


@dataclass(frozen=True)
class Topics:
    subscriptions: TopicSpec
    content: TopicSpec
    alerts: TopicSpec
    ticks: TopicSpec
    rival_ticks: TopicSpec
    module: str


async def create_topics(admin: AIOKafkaAdminClient) -> Topics:
    run = uuid.uuid4().hex[:10]
    specs = [
        TopicSpec(name=f"test.vip.{run}.{name}", partitions=3, key="test")
        for name in ("subscriptions", "content", "alerts", "ticks", "rival_ticks")
    ]
    await admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1) for s in specs]
    )
    subscriptions_topic, content_topic, alerts, ticks, rival_ticks = specs
    return Topics(subscriptions_topic, content_topic, alerts, ticks, rival_ticks, module=f"vip{run}")


def vip_groups(topics: Topics) -> list[HandlerGroup]:
    """The handlers and jobs under test on the stack's topics, a rival publisher and a second grant."""
    registry = ScheduledJobs(HandlerGroup(f"{topics.module}j"))
    subscriptions.register_jobs(registry, topic=topics.subscriptions, ticks=(topics.ticks,))
    routes = content.Routes(content=topics.content, alerts=topics.alerts)
    content.register_jobs(registry, routes=routes, ticks=(topics.ticks,))
    # Another consumer group running the publishing job, on ticks of its own (so each run has its
    # own record): ticking both at once makes two publishers compete for the same posts.
    rival = ScheduledJobs(HandlerGroup(f"{topics.module}r"))
    content.register_jobs(rival, routes=routes, ticks=(topics.rival_ticks,))
    # A second grant_access consumer (its own ledger): as if the event were delivered again.
    duplicate = HandlerGroup(f"{topics.module}d")
    granting: tuple[type[subscriptions.Granting], ...] = (SubscriptionStarted, SubscriptionRenewed)
    duplicate.handler(
        *granting,
        action="grant_access",
        topics=(topics.subscriptions,),
    )(subscriptions.subscriptions_grant_access_task)
    return [
        subscriptions.build_handlers(
            module=f"{topics.module}s", topic=topics.subscriptions, retry_delays_s=(1.0, 1.0, 1.0)
        ),
        content.build_handlers(module=f"{topics.module}c", topic=topics.content),
        registry.group,
        rival.group,
        duplicate,
    ]


@asynccontextmanager
async def running(
    settings: Settings, groups: Sequence[HandlerGroup], services: Services
) -> AsyncIterator[Consumers]:
    consumers = build_consumers(settings, groups=groups, services=services)
    await consumers.declare_topics()
    try:
        async with consumers.broker:
            await consumers.broker.start()
            consumers.start_relay()
            try:
                yield consumers
            finally:
                await consumers.stop_relay()
    finally:
        await consumers.resources.engine.dispose()


@dataclass
class Vip:
    """The running stack and what a test needs to drive it and read its effects."""

    double: TelegramDouble
    sender: TelegramSender
    topics: Topics
    groups: list[HandlerGroup]
    settings: Settings
    producer: RawProducer
    sessions: async_sessionmaker[AsyncSession]
    vip_chat_id: int
    users: list[int] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)

    async def publish(self, payload: EventPayload, topic: TopicSpec | None = None) -> EventEnvelope:
        envelope = EventEnvelope.wrap(payload, producer="test")
        await self.producer.send_event((topic or self.topics.subscriptions).name, envelope)
        return envelope

    async def tick(self, job: str, slot: datetime, *, rival: bool = False) -> EventEnvelope:
        topic = self.topics.rival_ticks if rival else self.topics.ticks
        return await self.publish(SchedulerTick(job=job, slot=slot, kind="manual"), topic)

    async def run_job(self, job: str, slot: datetime, within: float = 60) -> dict[str, int]:
        """Tick the job and wait for its run to finish; returns the run's counts."""
        envelope = await self.tick(job, slot)
        run = await self.wait_for_run(envelope.event_id, within)
        return dict(run.counts)

    async def wait_for_run(self, event_id: uuid.UUID, within: float = 60) -> JobRun:
        found: list[JobRun] = []

        async def finished() -> bool:
            async with self.sessions() as session:
                run = await session.scalar(select(JobRun).where(JobRun.event_id == event_id))
            found[:] = [run] if run is not None else []
            return run is not None and run.status is JobRunStatus.FINISHED

        await wait_for(finished, within=within)
        return found[0]

    def handler_name(self, action: str, module_suffix: str = "s") -> str:
        return f"dianabot.{self.topics.module}{module_suffix}.{action}"

    async def wait_handled(self, handler: str, *event_ids: uuid.UUID, within: float = 60) -> None:
        """Until the handler's ledger has every event (it committed its effects)."""

        async def done() -> bool:
            async with self.sessions() as session:
                rows = await session.scalars(
                    select(ProcessedEvent.event_id).where(
                        ProcessedEvent.consumer == handler, ProcessedEvent.event_id.in_(event_ids)
                    )
                )
                return len(set(rows)) == len(set(event_ids))

        await wait_for(done, within=within)

    # --- data ------------------------------------------------------------------------------------

    async def new_users(self, count: int, **options: Any) -> list[ChatUser]:
        users = await create_users(self.sessions, count, **options)
        self.users.extend(u.id for u in users)
        return users

    async def subscribe(
        self,
        user: ChatUser,
        end_at: datetime | None,
        *,
        status: SubscriptionStatus = SubscriptionStatus.ACTIVE,
        start_at: datetime | None = None,
    ) -> int:
        """A monthly subscription ending at ``end_at`` (lifetime when None); returns its id."""
        plan = SubscriptionPlan.LIFETIME if end_at is None else SubscriptionPlan.MONTHLY
        start = start_at or ((end_at or datetime.now(UTC)) - 30 * DAY)
        async with self.sessions() as session, session.begin():
            return (
                await session.execute(
                    insert(Subscription)
                    .values(user_id=user.id, plan=plan, status=status, start_at=start, end_at=end_at)
                    .returning(Subscription.id)
                )
            ).scalar_one()

    async def subscription(self, subscription_id: int) -> Subscription:
        async with self.sessions() as session:
            found = await session.get(Subscription, subscription_id)
        assert found is not None
        return found

    async def user(self, user_id: int) -> User:
        async with self.sessions() as session:
            found = await session.get(User, user_id)
        assert found is not None
        return found

    async def new_channel(self) -> int:
        chat_id = channel_chat_id()
        self.channels.append(chat_id)
        return chat_id

    async def outbox(self, event_type: str, topic: TopicSpec) -> list[dict[str, Any]]:
        """Payloads of the events of this type the stack emitted onto ``topic``."""
        async with self.sessions() as session:
            bodies = await session.scalars(
                select(OutboxEvent.body).where(
                    OutboxEvent.event_type == event_type, OutboxEvent.topic == topic.name
                )
            )
            return [dict(b["payload"]) for b in bodies]

    async def clean_up(self) -> None:
        async with self.sessions() as session, session.begin():
            if self.users:
                await session.execute(delete(User).where(User.id.in_(self.users)))
            if self.channels:
                await session.execute(delete(Channel).where(Channel.telegram_chat_id.in_(self.channels)))
        self.users.clear()
        self.channels.clear()

    # --- the double ------------------------------------------------------------------------------

    def texts(self, user: ChatUser) -> list[str | None]:
        return [m.text for m in self.double.messages_for(user.chat_id)]

    def buttons(self, user: ChatUser) -> list[list[dict[str, Any]]]:
        """The inline buttons of each message to the user (one list per message)."""
        return [
            [b for row in (m.reply_markup or {}).get("inline_keyboard", []) for b in row]
            for m in self.double.messages_for(user.chat_id)
        ]

    def member_calls(self, method: str, user: ChatUser) -> list[int]:
        """HTTP statuses of the member calls ``method`` about ``user`` in the VIP channel."""
        return [
            r.status
            for r in self.double.requests_for(method, chat_id=self.vip_chat_id)
            if int(r.params.get("user_id", 0)) == user.chat_id
        ]

    def member_status(self, user: ChatUser) -> str:
        return self.double.api.member(self.vip_chat_id, user.chat_id).status


async def ensure_vip_channel(sessions: async_sessionmaker[AsyncSession]) -> int:
    """The database's VIP channel, created if there is none (the handlers take the first one)."""
    async with sessions() as session, session.begin():
        await session.execute(
            pg_insert(Channel)
            .values(telegram_chat_id=VIP_CHAT_ID, kind=ChannelKind.VIP, title="VIP")
            .on_conflict_do_nothing(index_elements=[Channel.telegram_chat_id])
        )
        return await subscriptions.vip_channel(session)


@asynccontextmanager
async def vip_stack(
    admin: AIOKafkaAdminClient, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Vip]:
    topics = await create_topics(admin)
    groups = vip_groups(topics)
    vip_chat_id = await ensure_vip_channel(sessions)
    async with telegram_double() as double:
        settings = settings_for(double)
        async with sender_for(double) as sender, RawProducer(settings) as producer:
            services = Services(
                telegram=sender,
                subscriptions=SubscriptionSettings(
                    batch_size=2, renew_url=RENEW_URL, invite_link_ttl=timedelta(minutes=30)
                ),
                content=ContentSettings(posts_per_run=3),
                timezone=MADRID,
            )
            async with running(settings, groups, services):
                yield Vip(double, sender, topics, groups, settings, producer, sessions, vip_chat_id)


async def settle(seconds: float = 1.5) -> None:
    """Give events that should not have any effect the time to (not) have it."""
    await asyncio.sleep(seconds)
