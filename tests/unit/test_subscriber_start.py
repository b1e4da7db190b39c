"""A subscriber whose start meets a Kafka outage waits it out instead of failing the process."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError

from dianabot_core.pipeline.consumer import start_until_kafka_answers


class HalfStartedConsumer:
    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


class Subscriber:
    """What FastStream's subscriber does: builds its consumer, then starts it (which may fail)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.consumer: HalfStartedConsumer | None = None
        self.built: list[HalfStartedConsumer] = []
        self.started = False

    async def start(self) -> None:
        self.consumer = HalfStartedConsumer()
        self.built.append(self.consumer)
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")
        self.started = True


async def test_a_start_during_a_kafka_outage_is_retried_and_its_half_built_consumers_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    subscriber = Subscriber(failures=2)
    await asyncio.wait_for(
        start_until_kafka_answers(subscriber, subscriber.start, "dianabot.users.x", max_backoff_s=0.01),
        timeout=5,
    )
    assert subscriber.started
    assert [c.stopped for c in subscriber.built] == [True, True, False]
    assert subscriber.consumer is subscriber.built[-1]
    retries = [r for r in caplog.records if "could not start" in r.getMessage()]
    assert len(retries) == 2
    assert "dianabot.users.x" in retries[0].getMessage()


async def test_other_failures_are_not_retried() -> None:
    async def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await start_until_kafka_answers(object(), broken, "g")
