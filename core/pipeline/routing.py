"""Where a failed event goes: the handler's next retry topic, or the dead-letter topic.

Retry topics are per consumer group and per attempt (``{group}.retry.{n}``), each with one delay,
so records in a retry topic are due in the order they arrive and a retry consumer can simply wait
for the head record. The main partition is never blocked by a failing event.
A dead letter keeps the original bytes, key and headers, plus why and where it failed.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from faststream.kafka import KafkaBroker

from contracts.topics import DEAD_LETTERS
from core.pipeline.errors import describe
from core.pipeline.records import (
    H_ATTEMPT,
    H_DUE_AT,
    H_LAST_ERROR,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    Record,
    header,
)

H_DLQ_REASON = "x-dlq-reason"
H_DLQ_HANDLER = "x-dlq-handler"
H_DLQ_ATTEMPTS = "x-dlq-attempts"
H_DLQ_ERROR_TYPE = "x-dlq-error-type"
H_DLQ_ERROR_MESSAGE = "x-dlq-error-message"
H_DLQ_FAILED_AT = "x-dlq-failed-at"

_PIPELINE_HEADERS = frozenset({H_ATTEMPT, H_DUE_AT, H_LAST_ERROR})


def retry_delay(delays_s: tuple[float, ...], attempt: int, jitter: float) -> float:
    """The wait before retry `attempt` (1-based): the configured delay plus up to `jitter` of it.

    Jitter only ever adds, so a retry is never earlier than configured.
    """
    base = delays_s[attempt - 1]
    return base * (1 + random.random() * jitter)


def _original_headers(record: Record) -> dict[str, str]:
    return {
        key: value.decode("utf-8", errors="replace")
        for key, value in record.headers
        if key not in _PIPELINE_HEADERS
    }


def _origin(record: Record) -> dict[str, str]:
    """Where the record first entered: kept across retries so a dead letter names its source."""
    return {
        H_ORIGINAL_TOPIC: header(record, H_ORIGINAL_TOPIC) or record.topic,
        H_ORIGINAL_PARTITION: header(record, H_ORIGINAL_PARTITION) or str(record.partition),
        H_ORIGINAL_OFFSET: header(record, H_ORIGINAL_OFFSET) or str(record.offset),
    }


class FailureRouter:
    """Publishes failed records; every publish is acknowledged by Kafka before the source is committed."""

    def __init__(self, broker: KafkaBroker, dead_letter_topic: str = DEAD_LETTERS.name) -> None:
        self._broker = broker
        self._dead_letter_topic = dead_letter_topic

    async def to_retry(
        self, record: Record, *, topic: str, attempt: int, due_at: datetime, error: BaseException
    ) -> None:
        headers = {
            **_original_headers(record),
            **_origin(record),
            H_ATTEMPT: str(attempt),
            H_DUE_AT: str(int(due_at.timestamp() * 1000)),
            H_LAST_ERROR: f"{type(error).__name__}: {describe(error, 200)}",
        }
        await self._broker.publish(record.value or b"", topic, key=record.key, headers=headers)

    async def to_dead_letters(
        self,
        record: Record,
        *,
        handler: str,
        reason: str,
        attempts: int,
        failed_at: datetime,
        error: BaseException | None = None,
    ) -> None:
        headers = {
            **_original_headers(record),
            **_origin(record),
            H_DLQ_REASON: reason,
            H_DLQ_HANDLER: handler,
            H_DLQ_ATTEMPTS: str(attempts),
            H_DLQ_FAILED_AT: failed_at.isoformat(),
        }
        if error is not None:
            headers[H_DLQ_ERROR_TYPE] = type(error).__name__
            headers[H_DLQ_ERROR_MESSAGE] = describe(error)
        await self._broker.publish(
            record.value or b"", self._dead_letter_topic, key=record.key, headers=headers
        )


def due_after(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)
