"""Helpers shared by the outbox tests (this module holds no tests): rows, records, relay processes.

Every test relays only its own topic (created per test) under its own advisory lock key, so rows
other tests leave in the shared ``outbox`` table are never touched and nothing is truncated.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_core.models import OutboxEvent
from dianabot_core.outbox import add_to_outbox
from dianabot_core.settings import Settings

PRODUCER = "outbox-test"
NewTopic = Callable[..., Awaitable[str]]
SessionFactory = async_sessionmaker[AsyncSession]
RowView = tuple[UUID, str, datetime | None]


def new_lock_key() -> int:
    """A lock key of this test alone: relays of other tests (or other runs) never contend with it."""
    return secrets.randbits(62)


def activity(user_id: int, seq: int, kind: str | None = None) -> UserActivity:
    return UserActivity(user_id=user_id, at=datetime.now(UTC), kind=kind or str(seq))


async def write(
    session_factory: SessionFactory, topic: str, payloads: Sequence[UserActivity], per_transaction: int
) -> list[EventEnvelope]:
    envelopes: list[EventEnvelope] = []
    for start in range(0, len(payloads), per_transaction):
        async with session_factory() as session, session.begin():
            for payload in payloads[start : start + per_transaction]:
                envelopes.append(await add_to_outbox(session, payload, producer=PRODUCER, topic=topic))
    return envelopes


async def rows_of(session_factory: SessionFactory, topic: str) -> list[RowView]:
    """(event_id, key, published_at) of the topic's rows, in id order."""
    async with session_factory() as session:
        result = await session.execute(
            select(OutboxEvent.event_id, OutboxEvent.key, OutboxEvent.published_at)
            .where(OutboxEvent.topic == topic)
            .order_by(OutboxEvent.id)
        )
        return [(row.event_id, row.key, row.published_at) for row in result]


async def unpublished(session_factory: SessionFactory, topic: str) -> int:
    return sum(1 for _, _, published_at in await rows_of(session_factory, topic) if published_at is None)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.05)


async def all_published(session_factory: SessionFactory, topic: str, within: float = 60.0) -> None:
    async def done() -> bool:
        return await unpublished(session_factory, topic) == 0

    await eventually(done, within)


class Record:
    def __init__(
        self, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]], size: int = 0
    ) -> None:
        self.key = (key or b"").decode()
        self.body: dict[str, Any] = json.loads(value or b"{}")
        self.headers = {name: raw.decode() for name, raw in headers}
        self.event_id = UUID(self.headers["event_id"])
        self.size = size


async def read_topic(settings: Settings, topic: str, partitions: int) -> list[Record]:
    """Everything on the topic now, each partition in offset order (one key lives in one partition)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end: Mapping[TopicPartition, int] = await consumer.end_offsets(assigned)
        records: list[Record] = []
        async with asyncio.timeout(60):
            while [tp for tp in assigned if await consumer.position(tp) < end[tp]]:
                batch = await consumer.getmany(*assigned, timeout_ms=500)
                for partition_records in batch.values():
                    records += [
                        Record(r.key, r.value, r.headers, r.serialized_value_size) for r in partition_records
                    ]
        return records
    finally:
        await consumer.stop()


def first_seen_per_key(records: Iterable[Record]) -> dict[str, list[UUID]]:
    """Each key's event ids in the order they were first consumed (repeats dropped, as a ledger does)."""
    order: dict[str, list[UUID]] = defaultdict(list)
    seen: set[UUID] = set()
    for record in records:
        if record.event_id not in seen:
            seen.add(record.event_id)
            order[record.key].append(record.event_id)
    return dict(order)


def written_per_key(rows: Iterable[RowView]) -> dict[str, list[UUID]]:
    order: dict[str, list[UUID]] = defaultdict(list)
    for event_id, key, _ in rows:
        order[key].append(event_id)
    return dict(order)


class RelayProcess:
    """The relay of tests/integration/outbox_relay_proc.py in a process of its own."""

    def __init__(self, settings: Settings, topic: str, lock_key: int, log: Path, *options: str) -> None:
        self._args = [
            "-m",
            "tests.integration.outbox_relay_proc",
            f"--database-url={settings.database.url.get_secret_value()}",
            f"--bootstrap={settings.kafka.bootstrap_servers}",
            f"--topic={topic}",
            f"--lock-key={lock_key}",
            *options,
        ]
        self._log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, *self._args, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        assert await self.line() == "ready"

    async def line(self, within: float = 60) -> str:
        assert self.process is not None
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout=within)
        if not raw:
            raise AssertionError(f"the relay process ended; see {self._log}:\n{self._log.read_text()}")
        return raw.decode().strip()

    async def until(self, prefix: str, within: float = 60) -> str:
        """Read lines until one starts with ``prefix``; return it."""
        async with asyncio.timeout(within):
            while not (line := await self.line()).startswith(prefix):
                pass
        return line

    async def lines_for(self, seconds: float) -> list[str]:
        """Every line the process prints within ``seconds`` (none while it is stopped)."""
        lines: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                lines.append(await self.line(within=left))
            except TimeoutError:
                break
        return lines

    async def kill_after_acks(self, acks: int) -> int:
        """SIGKILL right after the relay's ``acks``-th acknowledged batch, before it is marked."""
        acked = 0
        for _ in range(acks):
            acked = int((await self.until("acked ")).split()[1])
        await self.signal(signal.SIGKILL)
        return acked

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self) -> int:
        return await self.signal(signal.SIGTERM)

    async def signal(self, signum: int) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signum)
        code = await asyncio.wait_for(self.process.wait(), timeout=30)
        self.process = None
        return code

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.process = None
