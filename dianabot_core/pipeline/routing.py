"""Where a failed event goes: the handler's next retry topic, or the dead-letter topic.

Retry topics are per consumer group and per attempt (``{group}.retry.{n}``), each with one delay,
so records in a retry topic are due in the order they arrive and a retry consumer can simply wait
for the head record. The main partition is never blocked by a failing event.
A dead letter keeps the original bytes, key and headers, plus why and where it failed.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from aiokafka.errors import (
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from faststream.kafka import KafkaBroker

from dianabot_contracts.topics import DEAD_LETTERS
from dianabot_core.pipeline.errors import describe
from dianabot_core.pipeline.records import (
    H_ATTEMPT,
    H_DUE_AT,
    H_LAST_ERROR,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    Origin,
    Record,
    headers_text,
)

H_DLQ_REASON = "x-dlq-reason"
H_DLQ_HANDLER = "x-dlq-handler"
H_DLQ_ATTEMPTS = "x-dlq-attempts"
H_DLQ_ERROR_TYPE = "x-dlq-error-type"
H_DLQ_ERROR_MESSAGE = "x-dlq-error-message"
H_DLQ_FAILED_AT = "x-dlq-failed-at"

# Set by the pipeline alone: a copy from the record (forged on a source topic, or stale from an
# earlier stage) never travels on.
_PIPELINE_HEADERS = frozenset(
    {H_ATTEMPT, H_DUE_AT, H_LAST_ERROR, H_ORIGINAL_TOPIC, H_ORIGINAL_PARTITION, H_ORIGINAL_OFFSET}
)


# Kafka refuses these records whenever they are sent: retrying the publish cannot help.
NEVER_PUBLISHABLE: tuple[type[Exception], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)

# The longest retry-after (e.g. a Telegram flood wait) the retry ladder honours; a longer one
# dead-letters the event with its reason, for an operator to replay.
MAX_RETRY_AFTER_S = 3600.0


def retry_delay(delays_s: tuple[float, ...], attempt: int, jitter: float) -> float:
    """The wait before retry `attempt` (1-based): the configured delay plus up to `jitter` of it.

    Jitter only ever adds, so a retry is never earlier than configured.
    """
    base = delays_s[attempt - 1]
    return base * (1 + random.random() * jitter)


def retry_plan(
    delays_s: tuple[float, ...], attempt: int, jitter: float, at_least_s: float = 0.0
) -> tuple[int, float] | None:
    """The retry stage and wait for retry `attempt` (1-based), or None when retries are exhausted.

    A failure that says how long to wait (``at_least_s``, a 429's retry_after) skips ahead to the
    first stage whose delay covers it, so records in each retry topic stay due in arrival order;
    only when no stage is long enough does the last stage wait longer than its delay.
    """
    if attempt > len(delays_s) or at_least_s > MAX_RETRY_AFTER_S:
        return None
    stage = next(
        (n for n in range(attempt, len(delays_s) + 1) if delays_s[n - 1] >= at_least_s), len(delays_s)
    )
    return stage, max(retry_delay(delays_s, stage, jitter), at_least_s)


def longest_wait_s(delays_s: tuple[float, ...], stage: int, jitter: float) -> float:
    """The latest a genuine record of retry `stage` can be due, counted from when it is read."""
    longest = delays_s[stage - 1] * (1 + jitter)
    return max(longest, MAX_RETRY_AFTER_S) if stage == len(delays_s) else longest


def _original_headers(record: Record) -> dict[str, str]:
    return {
        key: value
        for key, value in headers_text(record).items()
        if key not in _PIPELINE_HEADERS and not key.startswith("x-dlq-")
    }


def _origin_headers(origin: Origin) -> dict[str, str]:
    return {
        H_ORIGINAL_TOPIC: origin.topic,
        H_ORIGINAL_PARTITION: str(origin.partition),
        H_ORIGINAL_OFFSET: str(origin.offset),
    }


class FailureRouter:
    """Publishes failed records; every publish is acknowledged by Kafka before the source is committed."""

    def __init__(self, broker: KafkaBroker, dead_letter_topic: str = DEAD_LETTERS.name) -> None:
        self._broker = broker
        self._dead_letter_topic = dead_letter_topic

    async def to_retry(
        self,
        record: Record,
        *,
        origin: Origin,
        topic: str,
        attempt: int,
        due_at: datetime,
        error: BaseException,
    ) -> None:
        headers = {
            **_original_headers(record),
            **_origin_headers(origin),
            H_ATTEMPT: str(attempt),
            H_DUE_AT: str(int(due_at.timestamp() * 1000)),
            H_LAST_ERROR: f"{type(error).__name__}: {describe(error, 200)}",
        }
        await self._broker.publish(record.value or b"", topic, key=record.key, headers=headers)

    async def to_dead_letters(
        self,
        record: Record,
        *,
        origin: Origin,
        handler: str,
        reason: str,
        attempts: int,
        failed_at: datetime,
        error: BaseException | None = None,
    ) -> None:
        headers = {
            **_original_headers(record),
            **_origin_headers(origin),
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
