"""Hostile records on the real broker: every valid event handled once, every bad record dead-lettered once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from aiokafka.structs import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_core.clock import SystemClock
from dianabot_core.kafka import create_broker
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.pipeline.records import Record
from dianabot_core.pipeline.routing import FailureRouter
from dianabot_core.pipeline.runner import HandlerRunner, PipelineDeps
from dianabot_core.settings import Settings
from tests.integration.pipeline_support import (
    RawProducer,
    all_dead_letters,
    effects_of,
    ensure_effects_table,
    record_effect,
    running_consumers,
    unique_topic,
)


@pytest.fixture(autouse=True)
async def _effects(kafka: Settings, session_factory: async_sessionmaker[AsyncSession]) -> None:
    await ensure_effects_table(session_factory)


def _activity(user_id: int) -> EventEnvelope:
    return EventEnvelope.wrap(UserActivity(user_id=user_id, at=datetime.now(UTC)), producer="test")


def _counting_group() -> HandlerGroup:
    topic = unique_topic(partitions=1)
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")

    @group.handler(UserActivity, action="count", topics=(topic,), batch_size=50)
    async def count(event: UserActivity, ctx: HandlerContext) -> None:
        await record_effect(ctx, group.specs[0].name, ctx.envelope.key, event.user_id)

    return group


async def _wait_for_effects(
    session_factory: async_sessionmaker[AsyncSession], handler: str, count: int, within_s: float = 60
) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while len(await effects_of(session_factory, handler)) < count:
        assert asyncio.get_running_loop().time() < deadline, (
            "the lane stopped: not every valid event was handled"
        )
        await asyncio.sleep(0.2)


async def test_the_three_records_that_stopped_a_lane_are_dead_lettered_once_and_the_lane_moves_on(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    group = _counting_group()
    spec = group.specs[0]
    topic = spec.topics[0].name
    deep = b"[" * 200_000 + b"]" * 200_000
    huge_number = (
        json.dumps(_activity(0).model_dump(mode="json")).encode()[:-1] + b',"n":' + b"7" * 5000 + b"}"
    )
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_event(topic, _activity(1))
        await producer.send_raw(topic, deep)
        await producer.send_event(topic, _activity(2))
        await producer.send_raw(topic, huge_number)
        await producer.send_event(topic, _activity(3))
        null_header = _activity(4)
        await producer.send_raw(
            topic,
            null_header.to_body(),
            key=b"user:4",
            headers=[("event_id", None), ("trace", b"\xff")],  # type: ignore[list-item]
        )
        await producer.send_event(topic, _activity(5))
        await _wait_for_effects(session_factory, spec.name, 5)

    effects = await effects_of(session_factory, spec.name)
    assert sorted(e.seq for e in effects) == [1, 2, 3, 4, 5]  # the null-header record is a valid event
    letters = await all_dead_letters(kafka, spec.name)
    assert sorted(letter["x-dlq-reason"] for letter in letters) == [
        "malformed: body holds an integer too long to decode (over 4,300 digits)",
        "malformed: body is nested too deeply to decode",
    ]


@asynccontextmanager
async def _pipeline_deps(
    settings: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> AsyncIterator[PipelineDeps]:
    """What a consumer process gives its runners, to drive a runner directly as a consumer would."""
    broker = create_broker(settings.kafka)
    await broker.connect()
    try:
        yield PipelineDeps(session_factory=session_factory, router=FailureRouter(broker), clock=SystemClock())
    finally:
        await broker.stop()


def _record(topic: str, offset: int, value: bytes) -> Record:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=[],
    )


async def test_a_batch_read_again_after_a_rewind_dead_letters_nothing_twice(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    spec = _counting_group().specs[0]
    topic = spec.topics[0].name
    async with _pipeline_deps(kafka, session_factory) as deps:
        runner = HandlerRunner(spec, spec.name, deps)
        batch = [
            _record(topic, 0, b"not json"),
            _record(topic, 1, _activity(9).to_body()),
            _record(topic, 2, b"[]"),
        ]
        first = await runner.process(batch)
        again = await runner.process(batch)  # what a rewind does: the same records, read again
    assert (first.dead_lettered, first.handled) == (2, 1)
    assert (again.dead_lettered, again.duplicates) == (0, 1)
    letters = await all_dead_letters(kafka, spec.name)
    assert sorted(letter["x-original-offset"] for letter in letters) == ["0", "2"]


async def test_two_passes_over_the_same_record_at_once_dead_letter_it_once(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """What a rebalance does: the old owner still works on its batch while the new one re-reads it."""
    spec = _counting_group().specs[0]
    batch = [_record(spec.topics[0].name, offset, b"not json") for offset in range(5)]
    async with _pipeline_deps(kafka, session_factory) as deps:
        reports = await asyncio.gather(
            *(HandlerRunner(spec, spec.name, deps).process(batch) for _ in range(3))
        )
    assert sum(report.dead_lettered for report in reports) == 5
    letters = await all_dead_letters(kafka, spec.name)
    assert sorted(letter["x-original-offset"] for letter in letters) == ["0", "1", "2", "3", "4"]


async def test_a_dead_letter_kafka_will_not_take_is_kept_in_postgresql_and_the_lane_moves_on(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    group = _counting_group()
    spec = group.specs[0]
    topic = spec.topics[0].name
    # Fits the source topic, but not once the dead-letter headers are added to it.
    too_big = b"x" * (1_048_576 - 200)
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_raw(topic, too_big, key=b"big")
        await producer.send_event(topic, _activity(1))
        await _wait_for_effects(session_factory, spec.name, 1)
        async with session_factory() as session:
            rows = (
                await session.execute(
                    text(
                        "SELECT reason, publish_error, published_at, key, length(value) "
                        "FROM dead_letter_records WHERE handler = :h"
                    ),
                    {"h": spec.name},
                )
            ).all()
    assert len(rows) == 1
    reason, publish_error, published_at, key, size = rows[0]
    assert reason == "malformed: body is not JSON"
    assert publish_error.startswith("MessageSizeTooLargeError")
    assert (published_at, key, size) == (None, b"big", len(too_big))
    assert await all_dead_letters(kafka, spec.name, settle_s=1) == []


# Writes one record whose header key is not UTF-8: aiokafka's pure-Python builder encodes keys by
# calling str.encode, which this key overrides. The broker stores it as it is.
_BAD_KEY_PRODUCER = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

class BadKey(str):
    def encode(self, *args, **kwargs):
        return b"\\xff\\xfe-key"

async def main(servers, topic, value):
    producer = AIOKafkaProducer(bootstrap_servers=servers, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value.encode(), key=b"user:3", headers=[(BadKey("k"), b"v")])
    finally:
        await producer.stop()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_header_key_that_is_not_utf8_does_not_stop_the_partition(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    group = _counting_group()
    spec = group.specs[0]
    topic = spec.topics[0].name
    env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_event(topic, _activity(1))
        args = [sys.executable, "-c", _BAD_KEY_PRODUCER, kafka.kafka.bootstrap_servers, topic]
        await asyncio.to_thread(subprocess.run, [*args, _activity(2).to_body().decode()], env=env, check=True)
        await asyncio.to_thread(subprocess.run, [*args, "not json"], env=env, check=True)
        await producer.send_event(topic, _activity(3))
        await _wait_for_effects(session_factory, spec.name, 3)

    assert sorted(e.seq for e in await effects_of(session_factory, spec.name)) == [1, 2, 3]
    letters = await all_dead_letters(kafka, spec.name)
    assert [letter["x-dlq-reason"] for letter in letters] == ["malformed: body is not JSON"]
