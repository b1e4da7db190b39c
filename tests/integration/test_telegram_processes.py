"""Real consumer processes against one Bot API double: limits across processes, and SIGKILL mid-broadcast.

This module is also the processes' app: ``faststream run tests.integration.test_telegram_processes:app``
runs the notification and broadcast handlers on the topics named by TG_CRITICAL, TG_BULK and
TG_BROADCASTS, with a TelegramSender configured from the environment, as ``consumers.app`` will.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from faststream import FastStream
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import broadcasts, notifications
from consumers.app import create_app
from consumers.services import Services
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import BroadcastRequested, MessageContent, NotificationRequested
from dianabot_contracts.topics import TopicSpec
from dianabot_core.runtime import settings_or_exit
from dianabot_core.settings import Settings
from dianabot_core.telegram.broadcasts import broadcast_progress, notification_key
from dianabot_core.telegram.models import BroadcastRecipient, SendStatus
from dianabot_core.telegram.sender import TelegramSender
from dianabot_double import TelegramDouble
from tests.conftest import TEST_BOOTSTRAP, TEST_DATABASE_URL
from tests.integration.pipeline_support import RawProducer
from tests.integration.test_telegram_support import (
    TOKEN,
    Lanes,
    create_lanes,
    create_users,
    ledger_rows,
    telegram_double,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


# --- the consumer process ------------------------------------------------------------------------


@cache
def _app() -> FastStream:
    def topic(variable: str) -> TopicSpec:
        return TopicSpec(name=os.environ[variable], partitions=3, key="test")

    module = os.environ["TG_MODULE"]
    critical, bulk = topic("TG_CRITICAL"), topic("TG_BULK")
    groups = [
        notifications.build_handlers(critical=critical, bulk=bulk, module=f"{module}n"),
        broadcasts.build_handlers(
            broadcasts=topic("TG_BROADCASTS"), critical=critical, bulk=bulk, module=f"{module}b"
        ),
    ]
    settings = settings_or_exit()
    sender = TelegramSender.create(settings)
    return create_app(settings, groups=groups, services=Services(telegram=sender))  # it closes the sender


def __getattr__(name: str) -> FastStream:
    if name == "app":
        return _app()
    raise AttributeError(name)


# --- the tests -----------------------------------------------------------------------------------


def _start(
    double: TelegramDouble, lanes: Lanes, request_timeout_s: str = "10", **sender: str
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    env.update(
        TG_CRITICAL=lanes.critical.name,
        TG_BULK=lanes.bulk.name,
        TG_BROADCASTS=lanes.broadcasts.name,
        TG_MODULE=lanes.module,
        DIANABOT_KAFKA__BOOTSTRAP_SERVERS=TEST_BOOTSTRAP,
        DIANABOT_KAFKA__SESSION_TIMEOUT_MS="6000",
        DIANABOT_KAFKA__HEARTBEAT_INTERVAL_MS="1000",
        DIANABOT_DATABASE__URL=TEST_DATABASE_URL,
        DIANABOT_TELEGRAM__BOT_TOKEN=TOKEN,
        DIANABOT_TELEGRAM__API_BASE_URL=str(double.base_url),
        DIANABOT_TELEGRAM__ADMIN_CHAT_ID="-1",
        DIANABOT_TELEGRAM__REQUEST_TIMEOUT_S=request_timeout_s,
        DIANABOT_TELEMETRY__LOG_LEVEL="WARNING",
        DIANABOT_TELEMETRY__HTTP_PORT="0",  # two processes on one machine
    )
    env.update({f"DIANABOT_SENDER__{name.upper()}": value for name, value in sender.items()})
    faststream = str(Path(sys.executable).with_name("faststream"))
    return subprocess.Popen(
        [faststream, "run", "tests.integration.test_telegram_processes:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextmanager
def _processes(double: TelegramDouble, lanes: Lanes, count: int, **sender: str) -> Iterator[list[Any]]:
    processes = [_start(double, lanes, **sender) for _ in range(count)]
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)


async def _group_members(admin: AIOKafkaAdminClient, group: str) -> int:
    [response] = await admin.describe_consumer_groups([group])
    [description] = response.to_object()["groups"]
    return len(description["members"])


async def test_two_sender_processes_share_the_limits_and_lose_nothing_in_a_429_storm(
    kafka: Settings, admin: AIOKafkaAdminClient, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    lanes = await create_lanes(admin)
    singles = await create_users(session_factory, 160)
    repeated = await create_users(session_factory, 10)
    async with telegram_double() as double, RawProducer(kafka) as producer:
        # 20/s against Telegram's 30/s: the headroom a production setting keeps for a process that
        # stalls on a loaded machine and then sends its already-reserved slots together.
        with _processes(double, lanes, 2, global_rate_per_s="20"):
            group = f"dianabot.{lanes.module}n.send.bulk"
            await wait_for(lambda: _has_members(admin, group, 2), within=60)
            double.set_faults(storm={"count": 5, "retry_after": 2})
            envelopes = [
                EventEnvelope.wrap(
                    NotificationRequested(user_id=u.id, content=MessageContent(text=f"{u.id}:{i}")),
                    producer="test",
                )
                for u in singles + repeated
                for i in range(3 if u in repeated else 1)
            ]
            await producer.send_events(lanes.bulk.name, envelopes)
            keys = [notification_key(e.event_id) for e in envelopes]
            await wait_for(lambda: _all_sent(session_factory, keys), within=120)
            members = await _group_members(admin, group)
    stats = double.stats()
    delivered = Counter(m.text for m in double.messages)
    print(f"two processes: {stats['delivered']} delivered, max rate {stats['max_global_rate_1s']}/s")
    assert members == 2
    assert len(delivered) == len(envelopes)
    assert set(delivered.values()) == {1}
    assert stats["by_outcome"].get("storm") == 5
    assert stats["violations_total"] == 0, stats["violations"]
    # A send that passed its pre-call check just before the other process recorded the pause can
    # still arrive inside the flood wait: Telegram answers it 429 again and it is retried (the
    # counts above prove nothing was lost). More than one such race per storm would be a defect.
    assert stats["retry_after_ignored"] <= 1
    assert stats["max_global_rate_1s"] <= 30
    # The sender spaces one chat's messages 1.2 s apart by the database's clock; on a loaded
    # machine transit jitter can land two inside one second at the double (Telegram's limit is
    # "about one per second"); three would mean the spacing itself failed.
    assert stats["max_private_chat_rate_1s"] <= 2


async def _has_members(admin: AIOKafkaAdminClient, group: str, count: int) -> bool:
    try:
        return await _group_members(admin, group) == count
    except Exception:
        return False


async def _all_sent(session_factory: async_sessionmaker[AsyncSession], keys: list[str]) -> bool:
    rows = await ledger_rows(session_factory, keys)
    return len(rows) == len(keys) and all(r.status is SendStatus.SENT for r in rows.values())


async def test_a_broadcast_killed_again_and_again_messages_nobody_twice(
    kafka: Settings, admin: AIOKafkaAdminClient, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    lanes = await create_lanes(admin)
    users = await create_users(session_factory, 300)
    broadcast_id = f"kill-{uuid.uuid4().hex[:8]}"
    rng = random.Random(broadcast_id)
    sender = {
        "global_rate_per_s": "25",
        "broadcast_chunk_size": "10",  # a long fan-out, so kills land in it as well as in sending
        "in_flight_lease_s": "3",
    }
    kills = 0
    async with telegram_double() as double, RawProducer(kafka) as producer:
        envelope = EventEnvelope.wrap(
            BroadcastRequested(
                broadcast_id=broadcast_id,
                audience="list",
                user_ids=tuple(u.id for u in users),
                content=MessageContent(text="promo"),
            ),
            producer="test",
        )
        await producer.send_event(lanes.broadcasts.name, envelope)
        process = _start(double, lanes, request_timeout_s="2", **sender)
        try:
            while kills < 4:
                await wait_for(lambda: len(double.messages) > 0, within=60)
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                process = _start(double, lanes, request_timeout_s="2", **sender)
            await wait_for(lambda: _broadcast_finished(session_factory, broadcast_id), within=180)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)

    per_chat = Counter(m.chat_id for m in double.messages)
    async with session_factory() as session:
        progress = await broadcast_progress(session, broadcast_id, lease_s=3)
        recipients = await session.scalar(
            select(func.count()).where(BroadcastRecipient.broadcast_id == broadcast_id)
        )
    assert progress is not None
    rows = await ledger_rows(session_factory, await _recipient_keys(session_factory, broadcast_id))
    unknown = [r for r in rows.values() if r.status in (SendStatus.UNKNOWN, SendStatus.PENDING)]
    duplicates = sum(1 for count in per_chat.values() if count > 1)
    print(
        f"sigkill broadcast: kills={kills} recipients={recipients} delivered={len(per_chat)} "
        f"unknown={len(unknown)} duplicates={duplicates} progress={progress.as_dict()}"
    )
    assert recipients == len(users)  # each user queued once, however often the fan-out was cut
    assert duplicates == 0  # broadcasts do not resend unknown outcomes (broadcast_resend_if_unknown)
    assert progress.sent + progress.unknown == len(users)
    unknown_chats = {r.chat_id for r in unknown}
    assert all(per_chat[u.chat_id] == 1 for u in users if u.chat_id not in unknown_chats)
    assert double.stats()["violations_total"] == 0


async def _recipient_keys(session_factory: async_sessionmaker[AsyncSession], broadcast_id: str) -> list[str]:
    async with session_factory() as session:
        keys = await session.scalars(
            select(BroadcastRecipient.send_key).where(BroadcastRecipient.broadcast_id == broadcast_id)
        )
        return [k for k in keys if k is not None]


async def _broadcast_finished(session_factory: async_sessionmaker[AsyncSession], broadcast_id: str) -> bool:
    async with session_factory() as session:
        progress = await broadcast_progress(session, broadcast_id, lease_s=3)
    return progress is not None and progress.finished
