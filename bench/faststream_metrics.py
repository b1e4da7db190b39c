"""What FastStream's Prometheus middleware (dianabot_core/faststream_metrics.py) costs per publish
and per batch.

1. ``alone``: the middleware itself, as FastStream runs it (built for the message, entered, its
   publish or consume scope around a call that does nothing), minus the same without it: per
   publish, and per batch read of 1 and of 100 records (it runs once per batch).
2. ``in_memory``: the same work on two in-memory brokers (``TestKafkaBroker``: FastStream's whole
   publish and consume path, no network), one with the middleware and one without, alternating:

- ``publish``: a publish to a topic nobody reads here, as the outbox relay's (``no_confirm``);
- ``batch_of_1``: a publish read by a batch subscriber with manual commits, as the pipeline's, one
  record per batch (the middleware runs once per batch: its worst case per record);
- ``batch_of_100``: ``publish_batch`` of 100 records, read as one batch.

3. ``kafka`` (with ``--kafka HOST:PORT``): publishes to a real Kafka as the outbox relay sends them
   (idempotent producer, acks=all, ``no_confirm`` and every acknowledgement awaited at the end), with
   and without the middleware: FastStream's and aiokafka's whole publish path, the sender included.

Prints one JSON object: the median CPU µs per operation of each side and their difference. The
in-memory figures carry FastStream's own test machinery (call recording, decoding) and vary more.
Run: ``python -m bench.faststream_metrics [--rounds 7] [--count 3000] [--kafka 127.0.0.1:9092]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy, ContextRepo
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.message import KafkaAckableMessage
from faststream.kafka.response import KafkaPublishCommand
from faststream.response import PublishType

from dianabot_core.faststream_metrics import FASTSTREAM_METRICS

BODY = b'{"event_id": "00000000-0000-0000-0000-000000000000", "payload": {"user_id": 42}}' * 8
Work = Callable[[KafkaBroker, int], Awaitable[int]]


def _broker(with_metrics: bool) -> KafkaBroker:
    broker = KafkaBroker(middlewares=(FASTSTREAM_METRICS.middleware,) if with_metrics else ())

    @broker.subscriber("bench.read", group_id="bench", batch=True, ack_policy=AckPolicy.MANUAL)
    async def handle(message: KafkaMessage) -> None:
        await message.ack()

    return broker


async def _publish(broker: KafkaBroker, count: int) -> int:
    for _ in range(count):
        await broker.publish(BODY, "bench.unread", key=b"user:42", no_confirm=True)
    return count


async def _batch_of_1(broker: KafkaBroker, count: int) -> int:
    for _ in range(count):
        await broker.publish(BODY, "bench.read", key=b"user:42")
    return count


async def _batch_of_100(broker: KafkaBroker, count: int) -> int:
    batches = max(1, count // 100)
    for _ in range(batches):
        await broker.publish_batch(*([BODY] * 100), topic="bench.read")
    return batches * 100


async def _publish_acknowledged(broker: KafkaBroker, count: int) -> int:
    pending = [
        await broker.publish(BODY, "bench.faststream_metrics", key=b"user:42", no_confirm=True)
        for _ in range(count)
    ]
    await asyncio.gather(*pending)
    return count


async def _round(work: Work, with_metrics: bool, count: int) -> float:
    """CPU µs per operation (per record for the batches): this process's CPU time, not the wall
    clock, so other processes on a shared machine do not count."""
    broker = _broker(with_metrics)
    async with TestKafkaBroker(broker):
        await work(broker, 50)  # warm up
        started = time.process_time()
        done = await work(broker, count)
        return (time.process_time() - started) / done * 1e6


async def _kafka_round(bootstrap: str, with_metrics: bool, count: int) -> float:
    middlewares = (FASTSTREAM_METRICS.middleware,) if with_metrics else ()
    broker = KafkaBroker(bootstrap, middlewares=middlewares, enable_idempotence=True, acks="all")
    await broker.start()
    try:
        await _publish_acknowledged(broker, 200)  # warm up: metadata, connections
        started = time.process_time()
        done = await _publish_acknowledged(broker, count)
        return (time.process_time() - started) / done * 1e6
    finally:
        await broker.stop()


def _compared(without: list[float], with_metrics: list[float]) -> dict[str, float]:
    base, metered = statistics.median(without), statistics.median(with_metrics)
    return {
        "us_without": round(base, 1),
        "us_with": round(metered, 1),
        "us_added": round(metered - base, 1),
        "percent_added": round((metered - base) / base * 100, 1),
    }


async def _nothing(_: object) -> None:
    return None


async def _added_cpu_us(
    plain: Callable[[], Awaitable[None]], metered: Callable[[], Awaitable[None]], n: int
) -> float:
    timings = []
    for step in (plain, metered):
        started = time.process_time()
        for _ in range(n):
            await step()
        timings.append(time.process_time() - started)
    return (timings[1] - timings[0]) / n * 1e6


async def _alone(operation: str, iterations: int) -> float:
    """CPU µs the middleware adds to one publish or one batch read (``batch_of_N``)."""
    context = ContextRepo()
    middleware = FASTSTREAM_METRICS.middleware
    if operation == "publish":
        command = KafkaPublishCommand(
            BODY, topic="bench.unread", key=b"user:42", _publish_type=PublishType.PUBLISH, no_confirm=True
        )

        async def publish() -> None:
            await middleware(None, context=context).publish_scope(_nothing, command)

        return await _added_cpu_us(functools.partial(_nothing, command), publish, iterations)
    size = int(operation.removeprefix("batch_of_"))
    records = tuple(
        ConsumerRecord("bench.read", 0, offset, 0, 0, b"user:42", BODY, None, 7, len(BODY), [])
        for offset in range(size)
    )
    message = KafkaAckableMessage(records, [BODY] * size, consumer=None)

    async def consume() -> None:
        async with middleware(records, context=context) as scope:
            await scope.consume_scope(_nothing, message)

    return await _added_cpu_us(functools.partial(_nothing, message), consume, iterations)


async def run(rounds: int, count: int, kafka: str | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"alone": {}, "in_memory": {}}
    for operation in ("publish", "batch_of_1", "batch_of_100"):
        added = [await _alone(operation, count * 5) for _ in range(rounds)]
        results["alone"][operation] = {"us_added": round(statistics.median(added), 1)}
    for name, work in (("publish", _publish), ("batch_of_1", _batch_of_1), ("batch_of_100", _batch_of_100)):
        without: list[float] = []
        with_metrics: list[float] = []
        for _ in range(rounds):  # alternating, so a neighbour's load falls on both sides alike
            without.append(await _round(work, False, count))
            with_metrics.append(await _round(work, True, count))
        results["in_memory"][name] = _compared(without, with_metrics)
    if kafka is not None:
        without, with_metrics = [], []
        for _ in range(rounds):
            without.append(await _kafka_round(kafka, False, count))
            with_metrics.append(await _kafka_round(kafka, True, count))
        results["kafka"] = {"publish": _compared(without, with_metrics)}
    return {"rounds": rounds, "count": count, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--kafka", metavar="HOST:PORT", help="also publish to this Kafka")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.rounds, args.count, args.kafka)), indent=2))


if __name__ == "__main__":
    main()
