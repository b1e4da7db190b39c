"""Helpers shared by the Telegram tests (this module holds no tests): users, senders, topics, consumers.

Each test makes its own users (random Telegram ids), its own topics and handler modules, so it
never reads another test's records, and every assertion on the double is about its own chats.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.app import Consumers, build_consumers
from consumers.services import Services
from dianabot_contracts.topics import TopicSpec
from dianabot_core.models import User, UserState
from dianabot_core.pipeline.handlers import HandlerGroup
from dianabot_core.settings import Settings, TelegramSettings
from dianabot_core.telegram.models import TelegramSend
from dianabot_core.telegram.sender import TelegramSender
from dianabot_core.telegram.settings import SenderSettings
from dianabot_double import TelegramDouble
from tests.conftest import make_settings

TOKEN = "123456:telegram-tests"
_rng = random.Random()


@dataclass(frozen=True)
class ChatUser:
    id: int
    chat_id: int


def fresh_chat_ids(count: int) -> list[int]:
    """Telegram ids no other test uses (private chats are positive)."""
    base = _rng.randrange(10**9, 9 * 10**11)
    return [base + i for i in range(count)]


async def create_users(
    session_factory: async_sessionmaker[AsyncSession],
    count: int,
    *,
    state: UserState = UserState.FREE,
    language: str | None = "es",
    blocked: bool = False,
) -> list[ChatUser]:
    rows = [
        {
            "telegram_id": chat_id,
            "username": f"u{chat_id}",
            "language_code": language,
            "state": state,
            "bot_blocked_at": datetime.now(UTC) if blocked else None,
        }
        for chat_id in fresh_chat_ids(count)
    ]
    async with session_factory() as session, session.begin():
        result = await session.execute(insert(User).values(rows).returning(User.id, User.telegram_id))
        users = [ChatUser(r[0], r[1]) for r in result]
    return sorted(users, key=lambda u: u.id)


def sender_settings(**overrides: Any) -> SenderSettings:
    values: dict[str, Any] = {"global_rate_per_s": 25.0}
    values.update(overrides)
    return SenderSettings(**values)


def settings_for(double: TelegramDouble, request_timeout_s: float = 5.0) -> Settings:
    assert double.base_url is not None
    return make_settings(
        telegram=TelegramSettings(
            bot_token=TOKEN,
            api_base_url=double.base_url,
            admin_chat_id=-1000000000001,
            request_timeout_s=request_timeout_s,
        )
    )


@asynccontextmanager
async def telegram_double(**limits: Any) -> AsyncIterator[TelegramDouble]:
    """The double in this (pytest's) process. Its limits are judged on arrival times, so a full
    collection over the suite's hundreds of megabytes of objects (~250 ms) would queue requests and
    count the senders' evenly spaced sends as a burst: the collector's objects are frozen while it
    runs, as ``bench.telegram`` does for its double."""
    double = TelegramDouble(**limits)
    await double.start("127.0.0.1", 0)
    freezing = asyncio.create_task(_freeze_every(1.0))
    try:
        yield double
    finally:
        freezing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await freezing
        gc.unfreeze()
        await double.stop()


async def _freeze_every(seconds: float) -> None:
    while True:
        gc.freeze()
        await asyncio.sleep(seconds)


@asynccontextmanager
async def sender_for(
    double: TelegramDouble, *, request_timeout_s: float = 5.0, **overrides: Any
) -> AsyncIterator[TelegramSender]:
    sender = TelegramSender.create(settings_for(double, request_timeout_s), sender_settings(**overrides))
    try:
        yield sender
    finally:
        await sender.close()


async def ledger_rows(
    session_factory: async_sessionmaker[AsyncSession], keys: Iterable[str]
) -> dict[str, TelegramSend]:
    async with session_factory() as session:
        rows = await session.scalars(select(TelegramSend).where(TelegramSend.send_key.in_(list(keys))))
        return {row.send_key: row for row in rows}


@dataclass(frozen=True)
class Lanes:
    critical: TopicSpec
    bulk: TopicSpec
    broadcasts: TopicSpec
    module: str


async def create_lanes(admin: AIOKafkaAdminClient, partitions: int = 3) -> Lanes:
    """Topics named like the real lanes (…critical, …bulk), unique to the test."""
    run = uuid.uuid4().hex[:10]
    specs = [
        TopicSpec(name=f"test.tg.{run}.{lane}", partitions=partitions, key="test")
        for lane in ("critical", "bulk", "broadcasts")
    ]
    await admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1) for s in specs]
    )
    critical, bulk, broadcasts = specs
    return Lanes(critical, bulk, broadcasts, module=f"tg{run}")


def telegram_groups(lanes: Lanes) -> list[HandlerGroup]:
    from consumers import broadcasts, notifications

    return [
        notifications.build_handlers(critical=lanes.critical, bulk=lanes.bulk, module=f"{lanes.module}n"),
        broadcasts.build_handlers(
            broadcasts=lanes.broadcasts, critical=lanes.critical, bulk=lanes.bulk, module=f"{lanes.module}b"
        ),
    ]


@asynccontextmanager
async def running_telegram_consumers(
    settings: Settings, groups: Sequence[HandlerGroup], sender: TelegramSender
) -> AsyncIterator[Consumers]:
    """The handlers on real Kafka with the sender in their services, and the outbox relay running."""
    consumers = build_consumers(settings, groups=groups, services=Services(telegram=sender))
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


async def wait_for(predicate: Any, within: float = 60.0, interval: float = 0.1) -> None:
    """Poll an async or sync predicate until it is true."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
