"""Pipeline benchmark: this pipeline vs a plain aiokafka consume-and-commit loop, same run, same work.

Both sides do the same durable work per event: claim the event id in the processed-events ledger
and insert an effect row, in one transaction per batch, then commit the Kafka offsets.

1. Throughput: N events are published first, then each side drains its own copy of the topic;
   events/s = N / (time from the first effect written to the last).
2. Latency at a fixed rate: events are published at RATE/s for SECONDS while the consumer runs;
   latency = when the effect's transaction committed (PostgreSQL commit timestamp) - when the
   event was published.

Each consumer runs in its own process; this one publishes and watches. Prints one JSON object.
Run: `make bench` (or `python -m bench.pipeline --events 20000`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import NewTopic
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers.app import build_consumers
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_contracts.topics import TopicSpec
from dianabot_core.db import create_engine, create_session_factory
from dianabot_core.kafka import admin_client
from dianabot_core.logs import configure_logging
from dianabot_core.pipeline import ledger
from dianabot_core.pipeline.handlers import BatchContext, Delivery, HandlerContext, HandlerGroup
from dianabot_core.pipeline.records import DecodedEvent, decode
from dianabot_core.settings import Settings, load_settings

PARTITIONS = 6
EFFECTS_DDL = (
    "CREATE SCHEMA IF NOT EXISTS bench",
    """CREATE TABLE IF NOT EXISTS bench.effects (
        id bigserial PRIMARY KEY, side text NOT NULL, event_id uuid NOT NULL,
        published_ms double precision NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()
    )""",
    "CREATE INDEX IF NOT EXISTS effects_side_id ON bench.effects (side, id)",
)
INSERT_EFFECT = text(
    "INSERT INTO bench.effects (side, event_id, published_ms) VALUES (:side, :event_id, :published_ms)"
)


def _published_ms(event: UserActivity) -> float:
    return event.at.timestamp() * 1000


# --- the same work on both sides -----------------------------------------------------------------


async def baseline_consume(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    topic: str,
    side: str,
    stop: asyncio.Event,
) -> None:
    """A hand-written aiokafka loop: batch, one transaction (ledger + effects), commit offsets."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=side,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=20, max_records=500)
            records = [r for rs in batches.values() for r in rs]
            if not records:
                continue
            events = [d for d in map(decode, records) if isinstance(d, DecodedEvent)]
            async with session_factory() as session, session.begin():
                fresh = await ledger.claim(
                    session,
                    side,
                    [(e.envelope.event_id, e.envelope.event_type) for e in events],
                )
                rows = [
                    {
                        "side": side,
                        "event_id": e.envelope.event_id,
                        "published_ms": _published_ms(cast(UserActivity, e.payload)),
                    }
                    for e in events
                    if e.envelope.event_id in fresh
                ]
                if rows:
                    await session.execute(INSERT_EFFECT, rows)
            await consumer.commit()
    finally:
        await consumer.stop()


def pipeline_group(topic: TopicSpec, module: str, side: str, batch: bool) -> HandlerGroup:
    """The same effect as the baseline, written by a per-event handler or by a batch handler."""
    group = HandlerGroup(module)
    if batch:

        @group.batch_handler(UserActivity, action="bench", topics=(topic,))
        async def bench_record_effects_task(
            items: Sequence[Delivery[UserActivity]], ctx: BatchContext
        ) -> None:
            rows = [
                {"side": side, "event_id": i.envelope.event_id, "published_ms": _published_ms(i.payload)}
                for i in items
            ]
            await ctx.session.execute(INSERT_EFFECT, rows)

    else:

        @group.handler(UserActivity, action="bench", topics=(topic,))
        async def bench_record_effect_task(event: UserActivity, ctx: HandlerContext) -> None:
            row = {"side": side, "event_id": ctx.envelope.event_id, "published_ms": _published_ms(event)}
            await ctx.session.execute(INSERT_EFFECT, row)

    return group


# --- measuring -----------------------------------------------------------------------------------


async def _create_topic(settings: Settings, name: str) -> None:
    admin = admin_client(settings.kafka, "bench")
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()


def _envelope() -> EventEnvelope:
    return EventEnvelope.wrap(
        UserActivity(user_id=int(uuid.uuid4().int % 10_000), at=datetime.now(UTC)), producer="bench"
    )


async def _publish(producer: AIOKafkaProducer, topic: str, count: int, rate: float | None = None) -> None:
    started = time.perf_counter()
    futures = []
    for i in range(count):
        if rate is not None:
            # Paced: each event is stamped when it is actually sent.
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        envelope = _envelope()
        headers = [(k, v.encode()) for k, v in envelope.to_headers().items()]
        futures.append(
            await producer.send(topic, envelope.to_body(), key=envelope.key.encode(), headers=headers)
        )
    await asyncio.gather(*futures)


async def _count(session_factory: async_sessionmaker[AsyncSession], side: str) -> int:
    async with session_factory() as session:
        return int(
            await session.scalar(text("SELECT count(*) FROM bench.effects WHERE side = :s"), {"s": side}) or 0
        )


async def _effect_span_s(session_factory: async_sessionmaker[AsyncSession], side: str) -> float:
    async with session_factory() as session:
        span = await session.scalar(
            text("SELECT extract(epoch FROM max(at) - min(at)) FROM bench.effects WHERE side = :s"),
            {"s": side},
        )
    return float(span)


async def _wait_for(
    session_factory: async_sessionmaker[AsyncSession], side: str, count: int, within: float
) -> float:
    deadline = time.perf_counter() + within
    while (done := await _count(session_factory, side)) < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{side}: only {done}/{count} effects within {within}s")
        await asyncio.sleep(0.01)
    return time.perf_counter()


async def _commit_latencies(session_factory: async_sessionmaker[AsyncSession], side: str) -> list[float]:
    """Per effect: when its transaction committed (PostgreSQL's commit timestamp) - when published.

    Needs `track_commit_timestamp = on` (devstack/postgres/pg.sh sets it): no watcher process,
    no polling error, the same clock as the publisher.
    """
    async with session_factory() as session:
        rows = await session.execute(
            text(
                "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000 - published_ms "
                "FROM bench.effects WHERE side = :s"
            ),
            {"s": side},
        )
        return [float(latency) for (latency,) in rows]


def _percentile(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(q) - 1], 2) if len(values) > 1 else float("nan")


Runner = Callable[[str, str], Awaitable[Callable[[], Awaitable[None]]]]


async def measure(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    start_consumer: Runner,
    side: str,
    events: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        # 1. throughput over a backlog
        topic = f"bench.{side}.{uuid.uuid4().hex[:6]}"
        await _create_topic(settings, topic)
        await _publish(producer, topic, events)
        stop_consumer = await start_consumer(topic, side + ".throughput")
        await _wait_for(session_factory, side + ".throughput", events, within=300)
        await stop_consumer()
        # From the first effect to the last: start-up and group join are not counted for either side.
        throughput = events / await _effect_span_s(session_factory, side + ".throughput")

        # 2. latency at a fixed publish rate
        topic = f"bench.{side}.{uuid.uuid4().hex[:6]}"
        await _create_topic(settings, topic)
        stop_consumer = await start_consumer(topic, side + ".latency")
        await asyncio.sleep(3)  # joined and idle before the clock starts
        paced = int(rate * seconds)
        await _publish(producer, topic, paced, rate=rate)
        await _wait_for(session_factory, side + ".latency", paced, within=120)
        await stop_consumer()
        latencies = await _commit_latencies(session_factory, side + ".latency")
    finally:
        await producer.stop()
    return {
        "events": events,
        "throughput_events_per_s": round(throughput, 1),
        "latency_rate_per_s": rate,
        "latency_events": len(latencies),
        "latency_p50_ms": _percentile(latencies, 50),
        "latency_p99_ms": _percentile(latencies, 99),
    }


async def run_consumer(kind: str, topic: str, side: str) -> None:
    """The consumer side alone, in its own process, until SIGTERM: so the publisher and the
    latency watcher never compete with it for one event loop."""
    settings = load_settings()
    configure_logging("WARNING", json_lines=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if kind == "baseline":
        engine = create_engine(settings.database)
        task = asyncio.create_task(
            baseline_consume(settings, create_session_factory(engine), topic, side, stop)
        )
        print("ready", flush=True)
        await task
        await engine.dispose()
        return
    spec = TopicSpec(name=topic, partitions=PARTITIONS, key="user")
    consumers = build_consumers(
        settings, groups=[pipeline_group(spec, side.replace(".", "_"), side, kind == "batch")]
    )
    await consumers.declare_topics()
    await consumers.broker.start()
    print("ready", flush=True)
    await stop.wait()
    await consumers.broker.stop()
    await consumers.resources.engine.dispose()


def consumer_process(kind: str) -> Runner:
    async def start(topic: str, side: str) -> Callable[[], Awaitable[None]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.pipeline",
            "--consume",
            kind,
            "--topic",
            topic,
            "--side",
            side,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        await process.stdout.readline()  # "ready"

        async def halt() -> None:
            process.send_signal(signal.SIGTERM)
            await process.wait()

        return halt

    return start


async def main(events: int, rate: float, seconds: float) -> dict[str, Any]:
    settings = load_settings()
    configure_logging("WARNING", json_lines=True)
    engine = create_engine(settings.database)
    session_factory = create_session_factory(engine)
    async with engine.begin() as connection:
        for statement in EFFECTS_DDL:
            await connection.execute(text(statement))
    run = uuid.uuid4().hex[:6]
    results: dict[str, dict[str, Any]] = {}
    try:
        for kind in ("baseline", "batch", "event"):
            results[kind] = await measure(
                settings, session_factory, consumer_process(kind), f"{kind}{run}", events, rate, seconds
            )
    finally:
        await engine.dispose()
    base = results["baseline"]["throughput_events_per_s"]
    return {
        "baseline_aiokafka_loop": results["baseline"],
        "pipeline_batch_handler": results["batch"],
        "pipeline_per_event_handler": results["event"],
        "throughput_ratio": round(results["batch"]["throughput_events_per_s"] / base, 3),
        "throughput_ratio_per_event_handler": round(results["event"]["throughput_events_per_s"] / base, 3),
        "targets": {
            "throughput_ratio": 0.8,
            "throughput_events_per_s": 5000,
            "latency_p99_ms_at_1000_per_s": 50,
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="backlog size for the throughput phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s in the latency phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    parser.add_argument("--consume", choices=["baseline", "batch", "event"], help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        asyncio.run(run_consumer(args.consume, args.topic, args.side))
    else:
        print(json.dumps(asyncio.run(main(args.events, args.rate, args.seconds)), indent=2))
