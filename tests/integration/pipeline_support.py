"""Helpers for pipeline tests on the real broker: a consumer harness, raw publishing, effect tables."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.app import Consumers, build_consumers
from consumers.services import Services
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.topics import TopicSpec
from dianabot_core.clock import Clock, SystemClock
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.settings import Settings

# Effect tables live in their own schema so the models-vs-migrations check never sees them.
EFFECTS_DDL = """
CREATE SCHEMA IF NOT EXISTS testing;
CREATE TABLE IF NOT EXISTS testing.effects (
    id bigserial PRIMARY KEY,
    handler text NOT NULL,
    event_id uuid NOT NULL,
    key text NOT NULL,
    seq integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS effects_handler ON testing.effects (handler, event_id);
"""


async def ensure_effects_table(session_factory: async_sessionmaker[AsyncSession]) -> None:
    async with session_factory() as session:
        for statement in EFFECTS_DDL.split(";"):
            if statement.strip():
                await session.execute(text(statement))
        await session.commit()


async def record_effect(ctx: HandlerContext, handler: str, key: str, seq: int) -> None:
    await ctx.session.execute(
        text("INSERT INTO testing.effects (handler, event_id, key, seq) VALUES (:h, :e, :k, :s)"),
        {"h": handler, "e": ctx.envelope.event_id, "k": key, "s": seq},
    )


@dataclass(frozen=True)
class EffectRow:
    event_id: uuid.UUID
    key: str
    seq: int
    at: object


async def effects_of(session_factory: async_sessionmaker[AsyncSession], handler: str) -> list[EffectRow]:
    async with session_factory() as session:
        rows = await session.execute(
            text("SELECT event_id, key, seq, at FROM testing.effects WHERE handler = :h ORDER BY id"),
            {"h": handler},
        )
        return [EffectRow(*row) for row in rows]


async def committed_total(admin: AIOKafkaAdminClient, group: str) -> int:
    """The offsets `group` has committed, summed over its partitions."""
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)


def unique_topic(partitions: int = 3) -> TopicSpec:
    return TopicSpec(name=f"test.pipeline.{uuid.uuid4().hex[:10]}", partitions=partitions, key="test")


@asynccontextmanager
async def running_consumers(
    settings: Settings, groups: Iterable[HandlerGroup], clock: Clock | None = None
) -> AsyncIterator[Consumers]:
    consumers = build_consumers(settings, groups=groups, services=Services(clock=clock or SystemClock()))
    await consumers.declare_topics()
    try:
        async with consumers.broker:
            await consumers.broker.start()
            yield consumers
    finally:
        await consumers.resources.engine.dispose()


class RawProducer:
    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
        )

    async def __aenter__(self) -> RawProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send_event(self, topic: str, envelope: EventEnvelope) -> None:
        headers = [(k, v.encode()) for k, v in envelope.to_headers().items()]
        await self._producer.send_and_wait(
            topic, envelope.to_body(), key=envelope.key.encode(), headers=headers
        )

    async def send_events(
        self, topic: str, envelopes: Sequence[EventEnvelope], partition: int | None = None
    ) -> None:
        futures = []
        for envelope in envelopes:
            headers = [(k, v.encode()) for k, v in envelope.to_headers().items()]
            futures.append(
                await self._producer.send(
                    topic, envelope.to_body(), key=envelope.key.encode(), headers=headers, partition=partition
                )
            )
        for future in futures:
            await future

    async def send_raw(
        self, topic: str, value: bytes, key: bytes = b"raw", headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        await self._producer.send_and_wait(topic, value, key=key, headers=list(headers))


def _dead_letter_reader(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        "dianabot.dead_letters",
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )


def _letter_of(record: ConsumerRecord[bytes, bytes], handler: str) -> dict[str, str] | None:
    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}
    if headers.get("x-dlq-handler") != handler:
        return None
    headers["__value__"] = (record.value or b"").decode("utf-8", "replace")
    return headers


async def dead_letters_for(
    settings: Settings, handler: str, expected: int, within: float = 30
) -> list[dict[str, str]]:
    """Read the dead-letter topic until `expected` records of `handler` are seen."""
    consumer = _dead_letter_reader(settings)
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        deadline = asyncio.get_running_loop().time() + within
        while len(found) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found += [letter for r in records if (letter := _letter_of(r, handler)) is not None]
    finally:
        await consumer.stop()
    return found


async def all_dead_letters(settings: Settings, handler: str, settle_s: float = 3.0) -> list[dict[str, str]]:
    """Every record of `handler` on the dead-letter topic, read until nothing new came for `settle_s`."""
    consumer = _dead_letter_reader(settings)
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        quiet_since = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - quiet_since < settle_s:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                quiet_since = asyncio.get_running_loop().time()
                found += [letter for r in records if (letter := _letter_of(r, handler)) is not None]
    finally:
        await consumer.stop()
    return found
