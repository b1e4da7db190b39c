"""On the real broker: a FastStream subscriber in a consumer group commits what it handled,
and a restarted consumer in the same group resumes after the committed offset."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faststream import AckPolicy
from faststream.kafka import KafkaBroker

from dianabot_core.kafka import create_broker
from dianabot_core.settings import Settings
from tests.integration.pipeline_support import committed_total
from tests.support import wait_until


def _consuming_broker(settings: Settings, topic: str, group: str, seen: list[bytes]) -> KafkaBroker:
    broker = create_broker(settings.kafka)

    @broker.subscriber(topic, group_id=group, auto_offset_reset="earliest", ack_policy=AckPolicy.ACK)
    async def record(body: bytes) -> None:
        seen.append(body)

    return broker


async def _produce(settings: Settings, topic: str, bodies: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        for i, body in enumerate(bodies):
            await producer.send_and_wait(topic, body, key=str(i).encode())
    finally:
        await producer.stop()


async def test_handled_messages_are_committed_and_a_restart_resumes_after_them(
    kafka: Settings, admin: AIOKafkaAdminClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await new_topic(partitions=3)
    group = f"{topic}.group"
    first = [f"first-{i}".encode() for i in range(20)]
    await _produce(kafka, topic, first)

    seen: list[bytes] = []
    broker = _consuming_broker(kafka, topic, group, seen)
    async with broker:
        await broker.start()
        await wait_until(lambda: len(seen) >= len(first))
        await wait_until_committed(admin, group, len(first))
    assert sorted(seen) == sorted(first)

    second = [f"second-{i}".encode() for i in range(7)]
    await _produce(kafka, topic, second)

    seen_after_restart: list[bytes] = []
    broker = _consuming_broker(kafka, topic, group, seen_after_restart)
    async with broker:
        await broker.start()
        await wait_until(lambda: len(seen_after_restart) >= len(second))
        await wait_until_committed(admin, group, len(first) + len(second))
    # Nothing committed before the restart is read again.
    assert sorted(seen_after_restart) == sorted(second)


async def wait_until_committed(admin: AIOKafkaAdminClient, group: str, expected: int) -> None:
    total = -1
    for _ in range(200):
        total = await committed_total(admin, group)
        if total == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"group {group} committed {total} offsets, expected {expected}")
