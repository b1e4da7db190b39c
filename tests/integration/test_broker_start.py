"""On the real broker: a process's consumer groups join together, not one after another.

Each subscriber's start waits for its group's assignment; started in turn, a restarted consumers
process (37 groups) read its last groups 10-40 s after its first under `make chaos`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dianabot_core.kafka import create_broker
from dianabot_core.settings import Settings

pytestmark = pytest.mark.timeout(90)


async def test_subscribers_start_together_and_each_gets_its_partitions(
    kafka: Settings, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await new_topic(partitions=2)
    broker = create_broker(kafka.kafka)
    groups = 6
    for index in range(groups):

        @broker.subscriber(topic, group_id=f"{topic}.g{index}", auto_offset_reset="earliest")
        async def handle(body: Any) -> None:
            return None

    spans: list[tuple[float, float]] = []
    for subscriber in broker.subscribers:
        original = subscriber.start

        async def timed_start(original: Callable[[], Awaitable[None]] = original) -> None:
            began = time.monotonic()
            await original()
            spans.append((began, time.monotonic()))

        subscriber.start = timed_start  # type: ignore[method-assign]

    try:
        await asyncio.wait_for(broker.start(), timeout=60)
        assert len(spans) == groups
        # Every start had begun before the first one ended: they ran at once.
        assert max(began for began, _ in spans) < min(ended for _, ended in spans)
        for subscriber in broker.subscribers:
            consumer: Any = getattr(subscriber, "consumer", None)
            assert consumer is not None
            assert len(consumer.assignment()) == 2
    finally:
        await broker.stop()
