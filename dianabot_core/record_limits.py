"""How large a record Kafka takes: measured the way aiokafka measures it, before anything is sent.

aiokafka's producer refuses, client-side, a record whose estimated size (one record in a batch of
its own: key, value, headers and the batch overhead) exceeds ``max_request_size`` (1,048,576 by
default; the broker's default ``message.max.bytes`` is 1,048,588). A topic may lower the limit
(its ``max.message.bytes``), and then the *broker* refuses the batch — after which aiokafka's
idempotent producer fails every later record of that partition (``OutOfOrderSequenceNumber``)
until it is restarted. So a record is checked against both limits before it is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faststream.kafka import KafkaBroker

logger = logging.getLogger("dianabot.outbox")

DEFAULT_MAX_RECORD_BYTES = 1_048_576
# Headers added after the check: FastStream's correlation id, the telemetry middleware's trace
# context (traceparent is 55 bytes). Generous, so the producer's own check never fires first.
HEADER_RESERVE_BYTES = 512
# aiokafka's default batch_size: smaller records share batches of up to this size, so a topic
# whose limit is below it fails them whatever is checked here; only larger ones need its limit.
SMALL_RECORD_BYTES = 16_384
_TOPIC_LIMIT = "max.message.bytes"


def record_size(key: bytes | None, value: bytes, headers: Mapping[str, str]) -> int:
    """aiokafka's upper bound of the record's size on the wire (plus the reserve for late headers)."""
    encoded = [(name, header.encode()) for name, header in headers.items()]
    estimate: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, encoded)
    return estimate + HEADER_RESERVE_BYTES


def too_large(size: int, limit: int, source: str) -> str:
    """The reason a row is parked, e.g. "record of 1,500,321 bytes exceeds the 1,048,576-byte limit"."""
    return f"record of {size:,} bytes exceeds the {limit:,}-byte limit ({source})"


class TopicLimits:
    """Each topic's ``max.message.bytes`` as the broker reports it, re-read every ``ttl_s``.

    Best effort: when it cannot be read (Kafka unreachable, no DescribeConfigs permission, a test
    broker) the topic counts as unlimited here, only the configured limit applies, and it is asked
    again after ``retry_s``.
    """

    def __init__(self, broker: KafkaBroker, *, ttl_s: float = 300.0, retry_s: float = 30.0) -> None:
        self._broker = broker
        self._ttl_s = ttl_s
        self._retry_s = retry_s
        self._known: dict[str, tuple[int | None, float]] = {}  # topic -> (limit, good until)

    async def limit(self, topic: str) -> int | None:
        cached = self._known.get(topic)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        found = await self._read(topic)
        self._known[topic] = (found, time.monotonic() + (self._ttl_s if found is not None else self._retry_s))
        return found

    async def _read(self, topic: str) -> int | None:
        try:
            admin: Any = self._broker.config.admin_client
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {_TOPIC_LIMIT: None})]
            )
            for response in responses:
                for error_code, _message, _type, name, entries in response.resources:
                    if error_code == 0 and name == topic:
                        return next((int(e[1]) for e in entries if e[0] == _TOPIC_LIMIT), None)
        except Exception as error:
            logger.warning("cannot read %s of topic %s: %s", _TOPIC_LIMIT, topic, type(error).__name__)
        return None
