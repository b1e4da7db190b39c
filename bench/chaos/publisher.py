"""The outside producer: its own aiokafka client, publishing the stream at an even pace.

Records go one at a time, each acknowledged (``acks=all``) before the next, so a record retried
after a broker restart still lands before the ones behind it (a retry whose first try did land
only adds a duplicate, which is what a real producer does too). The client accepts up to 2 MiB,
so the broker, not the client, refuses records over its limit; those are counted, not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bench.chaos.workload import Record
from dianabot_core.settings import KafkaSettings

logger = logging.getLogger("bench.chaos")


@dataclass
class Published:
    sent: int = 0
    retries: int = 0
    refused: list[int] = field(default_factory=list)  # fuzz ids Kafka would not take
    errors: Counter[str] = field(default_factory=Counter)  # why sends were retried
    finished_s: float = 0.0


def _too_large(error: BaseException) -> bool:
    return "TooLarge" in type(error).__name__


class Publisher:
    def __init__(self, settings: KafkaSettings, origin: float) -> None:
        self.settings = settings
        self.origin = origin
        self.producer: AIOKafkaProducer | None = None
        self.result = Published()

    async def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers,
                client_id="dianabot-chaos-producer",
                acks="all",
                enable_idempotence=True,
                max_request_size=2 * 1024 * 1024,
                request_timeout_ms=10_000,
            )
            await producer.start()
            self.producer = producer
        return self.producer

    async def _reset(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)

    async def publish(self, stream: list[Record], over_s: float) -> Published:
        interval = over_s / max(1, len(stream))
        for i, record in enumerate(stream):
            delay = i * interval - (time.monotonic() - self.origin)
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send(record)
        self.result.finished_s = time.monotonic() - self.origin
        await self._reset()
        return self.result

    async def _send(self, record: Record) -> None:
        failures = 0
        while True:
            try:
                producer = await self._producer()
                await producer.send_and_wait(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=list(record.headers),
                )
                self.result.sent += 1
                return
            except Exception as error:
                if _too_large(error) and record.fuzz_id is not None:
                    self.result.refused.append(record.fuzz_id)
                    # aiokafka's idempotent producer counted the refused batch in its sequence
                    # numbers; the broker did not (OutOfOrderSequenceNumber next): start afresh.
                    await self._reset()
                    return
                failures += 1
                self.result.retries += 1
                self.result.errors[type(error).__name__] += 1
                await self._after_failure(error, failures)

    async def _after_failure(self, error: BaseException, failures: int) -> None:
        if failures == 1 or failures % 20 == 0:
            logger.info("publish failed (%s), retrying", type(error).__name__)
        if failures % 5 == 0 or not isinstance(error, KafkaError):
            await self._reset()  # a client that lost its broker for good: start a new one
        await asyncio.sleep(min(2.0, 0.2 * failures))
