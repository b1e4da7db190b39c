"""Reading what Kafka holds between two sets of offsets (the run's own records, the dead letters)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord, TopicPartition

from dianabot_contracts.topics import TOPICS
from dianabot_core.lag import offsets_reader
from dianabot_core.settings import KafkaSettings

Offsets = dict[TopicPartition, int]
Record: TypeAlias = ConsumerRecord[bytes | None, bytes | None]


def partitions_of(topics: Iterable[str]) -> list[TopicPartition]:
    counts = {spec.name: spec.partitions for spec in TOPICS}
    return [TopicPartition(topic, p) for topic in topics for p in range(counts[topic])]


async def end_offsets(
    settings: KafkaSettings, partitions: list[TopicPartition], attempts: int = 5
) -> Offsets:
    consumer = offsets_reader(settings, "chaos-offsets")
    await consumer.start()
    try:
        return await ends_of(consumer, partitions, attempts)
    finally:
        await consumer.stop()


async def ends_of(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], attempts: int = 1) -> Offsets:
    """End offsets through a started consumer. Assigning (paused) first fetches every topic's
    metadata in one request; topics created a moment ago may need another try."""
    consumer.assign(partitions)
    consumer.pause(*partitions)
    for attempt in range(1, attempts + 1):
        try:
            return {tp: int(offset) for tp, offset in (await consumer.end_offsets(partitions)).items()}
        except KafkaTimeoutError:
            if attempt == attempts:
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


async def read(
    settings: KafkaSettings, starts: Offsets, ends: Offsets, within_s: float = 180
) -> list[Record]:
    """Every record from `starts` (inclusive) to `ends` (exclusive), in partition then offset order."""
    wanted = [tp for tp in starts if ends[tp] > starts[tp]]
    if not wanted:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="dianabot-chaos-read",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    records: list[Record] = []
    try:
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, starts[tp])
        records = await _read_until(consumer, ends, within_s)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


async def _read_until(consumer: AIOKafkaConsumer, ends: Offsets, within_s: float) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + within_s
    pending = set(consumer.assignment())
    while pending and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
        for tp, batch in batches.items():
            records += [r for r in batch if r.offset < ends[tp]]
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
                consumer.pause(tp)
        await asyncio.sleep(0)
    if pending:
        raise RuntimeError(f"could not read back {sorted(map(str, pending))} within {within_s}s")
    return records
