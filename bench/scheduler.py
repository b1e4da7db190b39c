"""Scheduler benchmark: tick lateness of a per-second job, on the real PostgreSQL and Kafka.

One scheduler (leader election, outbox, tick relay: the same objects ``schedulers.app`` builds)
emits ``scheduled_secondly_test_probe`` on a topic of its own for ``--seconds``; a consumer reads
the topic. For every slot, lateness is measured three ways:

* committed: when the transaction that advanced the cursor and wrote the tick began (outbox
  ``created_at``) - the slot: the scheduler's wake-up precision;
* published: the Kafka record's timestamp - the slot: what the tick topic sees;
* received: when the benchmark's consumer got the record - the slot: what a job handler sees.

Prints one JSON object. Run: ``python -m bench.scheduler --seconds 60`` (after ``make migrate``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from sqlalchemy import delete, select

from dianabot_contracts.events import SchedulerTick
from dianabot_core.clock import SystemClock
from dianabot_core.jobs import SchedulerJobState
from dianabot_core.kafka import admin_client, create_broker
from dianabot_core.logs import configure_logging
from dianabot_core.models import OutboxEvent
from dianabot_core.pipeline.consumer import TopicDeclaration, declare_topics
from dianabot_core.publisher import EventPublisher
from dianabot_core.runtime import build_resources
from dianabot_core.schedule.settings import SchedulerSettings
from dianabot_core.settings import Settings, load_settings
from schedulers.app import build_service
from schedulers.state import PRODUCER

PROBE = "scheduled_secondly_test_probe"


def _summary(values_s: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values_s)
    if not ordered:
        return {}

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": round(ordered[-1] * 1000, 2),
        "mean": round(statistics.fmean(ordered) * 1000, 2),
    }


async def _read(settings: Settings, topic: str, seen: list[tuple[datetime, float, float, str]]) -> None:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                received = time.time()
                for record in records:
                    envelope = json.loads(record.value or b"{}")
                    tick = SchedulerTick.model_validate(envelope["payload"])
                    seen.append((tick.slot, record.timestamp / 1000, received, envelope["event_id"]))
    finally:
        await consumer.stop()


async def run(settings: Settings, seconds: float) -> dict[str, Any]:
    topic = f"bench.scheduler.{uuid.uuid4().hex[:10]}"
    scheduler = SchedulerSettings(
        enabled_jobs=frozenset({PROBE}),
        tick_topic=topic,
        lock_key=int.from_bytes(os.urandom(6), "big"),
    )
    resources = build_resources(settings)
    broker = create_broker(settings.kafka)
    admin = admin_client(settings.kafka)
    await admin.start()
    await declare_topics(admin, [TopicDeclaration(topic, 3, 3_600_000)])
    await admin.close()
    async with resources.session_factory() as session:
        await session.execute(delete(SchedulerJobState).where(SchedulerJobState.job == PROBE))
        await session.commit()
    await broker.connect()
    service = build_service(settings, scheduler, resources, EventPublisher(broker, PRODUCER), SystemClock())
    seen: list[tuple[datetime, float, float, str]] = []
    reader = asyncio.create_task(_read(settings, topic, seen))
    try:
        service.start()
        await asyncio.sleep(seconds)
        await service.stop()
        await asyncio.sleep(1)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await broker.stop()
    async with resources.session_factory() as session:
        rows = await session.execute(
            select(OutboxEvent.event_id, OutboxEvent.created_at).where(
                OutboxEvent.event_id.in_([uuid.UUID(s[3]) for s in seen])
            )
        )
        created = {str(event_id): at for event_id, at in rows}
    await resources.engine.dispose()
    slots = sorted({s[0] for s in seen})
    span = int((slots[-1] - slots[0]).total_seconds()) + 1 if slots else 0
    return {
        "benchmark": "scheduler_tick_lateness",
        "job": PROBE,
        "seconds": seconds,
        "ticks": len(seen),
        "distinct_slots": len(slots),
        "missing_slots": span - len(slots),
        "duplicate_records": len(seen) - len(slots),
        "lateness_ms": {
            "committed": _summary([(created[s[3]] - s[0]).total_seconds() for s in seen if s[3] in created]),
            "published": _summary([s[1] - s[0].timestamp() for s in seen]),
            "received": _summary([s[2] - s[0].timestamp() for s in seen]),
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the per-second job runs")
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging("WARNING", settings.telemetry.log_json)
    print(json.dumps(asyncio.run(run(settings, args.seconds)), indent=2))


if __name__ == "__main__":
    main()
