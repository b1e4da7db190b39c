"""The dead-letter topic as the operator CLI reads it: records, where they came from, and which
were replayed (the progress kept in the commits of a consumer group).

Copies: the pipeline dead-letters each (handler, source record) once, but a crash between the
publish and its record may leave a second copy on the topic. ``DeadLetter.identity`` names the
dead letter whatever copy it is, so listing and ``replay --all`` treat copies as one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from dianabot_contracts.envelope import HEADER_EVENT_ID, HEADER_EVENT_TYPE
from dianabot_core.cli.output import CliError
from dianabot_core.kafka import _admin_security_options, admin_client
from dianabot_core.lag import offsets_reader
from dianabot_core.pipeline.records import (
    H_ATTEMPT,
    H_DUE_AT,
    H_LAST_ERROR,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
)
from dianabot_core.pipeline.routing import (
    H_DLQ_ATTEMPTS,
    H_DLQ_ERROR_TYPE,
    H_DLQ_FAILED_AT,
    H_DLQ_HANDLER,
    H_DLQ_REASON,
)
from dianabot_core.settings import KafkaSettings

H_REPLAYED_FROM = "x-replayed-from"
PROGRESS_GROUP = "dianabot.cli.dlq-replay"
# Kafka refuses commit metadata over offset.metadata.max.bytes (4096 by default).
MAX_PROGRESS_METADATA = 3000

# Headers the pipeline adds on the way to the dead letters (retries, origin, the reason); a replay
# starts the journey afresh, so none of them, nor an earlier replay's mark, goes on with it. By
# prefix too: whatever origin or dead-letter header the pipeline adds later is dropped as well.
_DROPPED_ON_REPLAY = frozenset({H_ATTEMPT, H_DUE_AT, H_LAST_ERROR, H_REPLAYED_FROM})
_DROPPED_PREFIXES = ("x-dlq-", "x-original-")
assert all(h.startswith("x-original-") for h in (H_ORIGINAL_TOPIC, H_ORIGINAL_PARTITION, H_ORIGINAL_OFFSET))

Identity = tuple[str, str, str, str]


def dropped_on_replay(header: str) -> bool:
    name = header.lower()
    return name in _DROPPED_ON_REPLAY or name.startswith(_DROPPED_PREFIXES)


def parse_position(text: str) -> tuple[int, int]:
    """``"2:15"`` -> (2, 15): a dead letter's partition and offset."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise argparse.ArgumentTypeError(f"expected PARTITION:OFFSET, e.g. 0:42, got {text!r}")
    return int(partition), int(offset)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic: the original bytes, key and headers, and why it failed."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        headers = tuple((str(k), bytes(v)) for k, v in record.headers)
        return cls(record.partition, record.offset, record.timestamp, record.key, record.value, headers)

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        return next((_text(v) for k, v in self.headers if k == name), None)

    @property
    def handler(self) -> str | None:
        return self.header(H_DLQ_HANDLER)

    @property
    def original_topic(self) -> str | None:
        return self.header(H_ORIGINAL_TOPIC)

    @property
    def source(self) -> tuple[str | None, str | None, str | None]:
        """Where the record first entered the pipeline: topic, partition, offset."""
        return (
            self.original_topic,
            self.header(H_ORIGINAL_PARTITION),
            self.header(H_ORIGINAL_OFFSET),
        )

    def event_ref(self) -> tuple[str | None, str | None]:
        """The event's id and type: from the headers, else from the body if it is an envelope."""
        event_id, event_type = self.header(HEADER_EVENT_ID), self.header(HEADER_EVENT_TYPE)
        if event_id is None or event_type is None:
            body = self.body_json()
            if isinstance(body, dict):
                event_id = event_id or _str_or_none(body.get("event_id"))
                event_type = event_type or _str_or_none(body.get("event_type"))
        return event_id, event_type

    def body_json(self) -> Any:
        try:
            return json.loads(self.value or b"")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None

    @property
    def identity(self) -> Identity | None:
        """(handler, source topic, partition, offset): the same for every copy of one dead letter;
        None when a header is missing (then the record stands for itself)."""
        handler, (topic, partition, offset) = self.handler, self.source
        if handler is None or topic is None or partition is None or offset is None:
            return None
        return handler, topic, partition, offset

    def replay_headers(self) -> list[tuple[str, bytes]]:
        kept = [(k, v) for k, v in self.headers if not dropped_on_replay(k)]
        return [*kept, (H_REPLAYED_FROM, self.position.encode())]

    def summary(self) -> dict[str, Any]:
        event_id, event_type = self.event_ref()
        return {
            "dead_letter": self.position,
            "failed_at": self.header(H_DLQ_FAILED_AT),
            "handler": self.handler,
            "reason": self.header(H_DLQ_REASON),
            "attempts": self.header(H_DLQ_ATTEMPTS),
            "error_type": self.header(H_DLQ_ERROR_TYPE),
            "source_topic": self.original_topic,
            "event_type": event_type,
            "event_id": event_id,
        }

    def details(self) -> dict[str, Any]:
        body: Any = self.body_json()
        if body is None and self.value:
            try:
                body = self.value.decode("utf-8")
            except UnicodeDecodeError:
                body = {"hex": self.value.hex()}
        return {
            "dead_letter": self.position,
            "timestamp": datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat(),
            "key": _text(self.key),
            "headers": {k: _text(v) for k, v in self.headers},
            "body": body,
        }


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass
class PartitionProgress:
    """What was replayed on one dead-letter partition: everything below `watermark`, and `replayed`."""

    watermark: int
    replayed: set[int] = field(default_factory=set)

    @classmethod
    def decode(cls, offset: int, metadata: str) -> PartitionProgress:
        replayed: set[int] = set()
        for part in filter(None, metadata.split(",")):
            low, _, high = part.partition("-")
            replayed.update(range(int(low), int(high or low) + 1))
        return cls(offset, replayed)

    def is_replayed(self, offset: int) -> bool:
        return offset < self.watermark or offset in self.replayed

    def mark(self, offset: int) -> None:
        self.replayed.add(offset)
        self.settle()

    def settle(self, log_start: int = 0) -> None:
        """Move the watermark over replayed offsets (and offsets retention already deleted)."""
        self.watermark = max(self.watermark, log_start)
        while self.watermark in self.replayed:
            self.watermark += 1
        self.replayed = {o for o in self.replayed if o >= self.watermark}

    def encode(self, limit: int = MAX_PROGRESS_METADATA) -> str:
        """Offset ranges, ``"5,7-9"``; past `limit` the oldest are forgotten (replaying one twice is safe)."""
        ranges: list[str] = []
        for low, high in _ranges(sorted(self.replayed, reverse=True)):
            ranges.append(str(low) if low == high else f"{low}-{high}")
            if sum(len(r) + 1 for r in ranges) > limit:
                ranges.pop()
                break
        return ",".join(reversed(ranges))


def _ranges(descending: Sequence[int]) -> Iterable[tuple[int, int]]:
    run: list[int] = []
    for offset in descending:
        if run and offset != run[-1] - 1:
            yield run[-1], run[0]
            run = []
        run.append(offset)
    if run:
        yield run[-1], run[0]


class DeadLetterTopic:
    """Reading the dead-letter topic, and publishing and recording replays; ``async with`` it."""

    def __init__(self, settings: KafkaSettings, topic: str, progress_group: str = PROGRESS_GROUP) -> None:
        self.settings = settings
        self.topic = topic
        self.progress_group = progress_group
        self._admin: AIOKafkaAdminClient = admin_client(settings, "cli")
        self._reader: AIOKafkaConsumer = offsets_reader(settings, "cli-dlq")
        self._committer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._topics: set[str] = set()

    async def __aenter__(self) -> DeadLetterTopic:
        try:
            await self._admin.start()
            await self._reader.start()
            self._topics = set(await self._admin.list_topics())
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in (self._producer, self._committer, self._reader):
            if client is not None:
                await client.stop()
        await self._admin.close()

    async def partitions(self) -> list[TopicPartition]:
        # Only describe a topic known to exist: a metadata request may auto-create a missing one.
        if self.topic not in self._topics:
            return []
        described = await self._admin.describe_topics([self.topic])
        return sorted(TopicPartition(self.topic, p["partition"]) for p in described[0]["partitions"])

    async def bounds(self) -> dict[TopicPartition, tuple[int, int]]:
        partitions = await self.partitions()
        if not partitions:
            return {}
        self._reader.assign(partitions)
        self._reader.pause(*partitions)
        starts = await self._reader.beginning_offsets(partitions)
        ends = await self._reader.end_offsets(partitions)
        return {tp: (int(starts[tp]), int(ends[tp])) for tp in partitions}

    async def read(
        self, starts: Mapping[int, int] | None = None, only: int | None = None
    ) -> AsyncIterator[DeadLetter]:
        """Every dead letter from `starts` (partition -> offset; default the log start) to the end
        as it was when reading began; of partition `only` if given."""
        bounds = {tp: b for tp, b in (await self.bounds()).items() if only in (None, tp.partition)}
        begin = {tp: max(low, (starts or {}).get(tp.partition, 0)) for tp, (low, _) in bounds.items()}
        ends = {tp: high for tp, (_, high) in bounds.items()}
        pending = [tp for tp in bounds if begin[tp] < ends[tp]]
        if not pending:
            return
        self._reader.assign(pending)
        for tp in pending:
            self._reader.seek(tp, begin[tp])
        async for letter in self._fetch(pending, ends):
            yield letter

    async def _fetch(
        self, pending: list[TopicPartition], ends: Mapping[TopicPartition, int]
    ) -> AsyncIterator[DeadLetter]:
        idle_deadline = asyncio.get_running_loop().time() + self.settings.connect_timeout_s * 3
        while pending:
            batch = await self._reader.getmany(*pending, timeout_ms=500, max_records=1000)
            if batch:
                idle_deadline = asyncio.get_running_loop().time() + self.settings.connect_timeout_s * 3
            elif asyncio.get_running_loop().time() > idle_deadline:
                raise CliError(f"reading {self.topic} stalled before its end")
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield DeadLetter.from_record(record)
            pending = [tp for tp in pending if await self._reader.position(tp) < ends[tp]]

    async def read_one(self, partition: int, offset: int) -> DeadLetter:
        bounds = {tp.partition: b for tp, b in (await self.bounds()).items()}
        if partition not in bounds:
            raise CliError(f"{self.topic} has no partition {partition}")
        low, high = bounds[partition]
        if not low <= offset < high:
            held = f"offsets {low}..{high - 1}" if high > low else "no records"
            raise CliError(f"no dead letter at {partition}:{offset} (partition {partition} holds {held})")
        async for letter in self.read({partition: offset}, only=partition):
            if letter.offset == offset:
                return letter
            break
        raise CliError(f"no dead letter at {partition}:{offset}")

    def topic_exists(self, name: str) -> bool:
        return name in self._topics

    async def progress(self) -> dict[int, PartitionProgress]:
        committed = await self._admin.list_consumer_group_offsets(self.progress_group)
        progress = {
            tp.partition: PartitionProgress.decode(int(om.offset), str(om.metadata or ""))
            for tp, om in committed.items()
            if tp.topic == self.topic and om.offset >= 0
        }
        for tp, (low, _) in (await self.bounds()).items():
            progress.setdefault(tp.partition, PartitionProgress(low)).settle(low)
        return progress

    async def save_progress(self, progress: Mapping[int, PartitionProgress]) -> None:
        if self._committer is None:
            self._committer = offsets_reader(self.settings, "cli-dlq-progress", group_id=self.progress_group)
            await self._committer.start()
            self._committer.assign([TopicPartition(self.topic, p) for p in progress])
        await self._committer.commit(
            {TopicPartition(self.topic, p): (pp.watermark, pp.encode()) for p, pp in progress.items()}
        )

    async def publish(self, letter: DeadLetter, topic: str) -> str:
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers,
                client_id=f"{self.settings.client_id}-cli-replay",
                enable_idempotence=True,
                acks="all",
                request_timeout_ms=int(self.settings.connect_timeout_s * 1000),
                **_admin_security_options(self.settings),
            )
            await self._producer.start()
        sent = await self._producer.send_and_wait(
            topic, letter.value, key=letter.key, headers=letter.replay_headers()
        )
        return f"{sent.partition}:{sent.offset}"
