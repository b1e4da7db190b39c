"""The operator's command line: dead letters, consumer lag, jobs and broadcasts.

    python -m core.cli dlq list [--handler H] [--source-topic T] [--limit N]
    python -m core.cli dlq show PARTITION:OFFSET
    python -m core.cli dlq replay PARTITION:OFFSET [PARTITION:OFFSET ...] [--dry-run]
    python -m core.cli dlq replay --all [--handler H] [--source-topic T] [--dry-run]
    python -m core.cli lag [--group G ...] [--lagging]
    python -m core.cli jobs list | jobs trigger NAME          (delegated to schedulers.cli)
    python -m core.cli broadcast progress ID                  (core.telegram.broadcasts, from PostgreSQL)

Output is an aligned text table; ``--json`` prints JSON instead. Only the ``DIANABOT_KAFKA__*``
settings are read (and ``DIANABOT_DATABASE__*`` by ``broadcast``), so the tool needs no bot token.
Exit status: 0 done, 1 failed (Kafka unreachable, no such dead letter, a replay that could not be
published), 2 bad usage or settings.

Replaying a dead letter publishes its original bytes, key and headers (less the pipeline's
``x-dlq-*``, retry and origin headers, plus ``x-replayed-from: PARTITION:OFFSET``) to the topic it
first entered (``x-original-topic``). Every handler group on that topic sees it again: those that
handled it already drop it by their ledger, the failed one handles it now, and a record that is
still bad is dead-lettered again (a new dead letter, replayable in turn). So replays are safe to
repeat; the record of what was replayed only avoids needless ones.

That record is the consumer group ``dianabot.cli.dlq-replay`` (``--progress-group``): for each
dead-letter partition its committed offset is a watermark, below which every dead letter was
replayed (or could not be, e.g. its topic is gone, which ``--all`` reports once), and the commit's
metadata lists replayed offsets above it (left by filtered ``--all`` runs and by replays by
position). ``--all`` replays only what is neither below the watermark nor listed; replaying by
position always publishes and adds the offset to the list. ``lag --group dianabot.cli.dlq-replay``
shows how many dead letters lie past the watermark. Run one ``--all`` at a time: two at once may
both replay a record (harmless, as said, but noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import TopicPartition
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.exc import SQLAlchemyError

from contracts.envelope import HEADER_EVENT_ID, HEADER_EVENT_TYPE
from contracts.topics import DEAD_LETTERS
from core.db import create_engine, create_session_factory
from core.kafka import _admin_security_options, admin_client
from core.lag import GroupLag, group_lags, offsets_reader
from core.pipeline.records import (
    H_ATTEMPT,
    H_DUE_AT,
    H_LAST_ERROR,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
)
from core.pipeline.routing import (
    H_DLQ_ATTEMPTS,
    H_DLQ_ERROR_TYPE,
    H_DLQ_FAILED_AT,
    H_DLQ_HANDLER,
    H_DLQ_REASON,
)
from core.settings import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    ConfigError,
    KafkaSettings,
    describe_validation_error,
    load_database_settings,
)

H_REPLAYED_FROM = "x-replayed-from"
PROGRESS_GROUP = "dianabot.cli.dlq-replay"
# Kafka refuses commit metadata over offset.metadata.max.bytes (4096 by default).
MAX_PROGRESS_METADATA = 3000
COMMIT_EVERY = 100

# Headers the pipeline added on the way to the dead letters; a replay starts the journey afresh.
_DROPPED_ON_REPLAY = frozenset(
    {
        H_ATTEMPT,
        H_DUE_AT,
        H_LAST_ERROR,
        H_ORIGINAL_TOPIC,
        H_ORIGINAL_PARTITION,
        H_ORIGINAL_OFFSET,
        H_REPLAYED_FROM,
    }
)


class CliError(Exception):
    """A failure to report in one line (exit status 1)."""


# --- settings ---------------------------------------------------------------------------------


class _KafkaOnly(BaseSettings):
    """Just the Kafka section: an operator's shell needs no bot token or database URL."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, env_file=".env", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)


def load_kafka_settings() -> KafkaSettings:
    try:
        return _KafkaOnly().kafka
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


# --- dead letters -----------------------------------------------------------------------------


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

    def replay_headers(self) -> list[tuple[str, bytes]]:
        kept = [(k, v) for k, v in self.headers if not k.startswith("x-dlq-") and k not in _DROPPED_ON_REPLAY]
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


@dataclass
class ReplayResult:
    dead_letter: str
    handler: str | None
    event_id: str | None
    topic: str | None
    status: str
    published_as: str | None = None

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")


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


class Replayer:
    """Replays dead letters to their source topics and records each in the progress."""

    def __init__(
        self,
        dlq: DeadLetterTopic,
        progress: dict[int, PartitionProgress],
        *,
        dry_run: bool = False,
        settle_failures: bool = False,
    ) -> None:
        self.dlq = dlq
        self.progress = progress
        self.dry_run = dry_run
        # --all records a dead letter it cannot replay too, so its next run moves past it.
        self.settle_failures = settle_failures
        self.results: list[ReplayResult] = []
        self._sources: dict[tuple[str | None, ...], str] = {}
        self._unsaved = 0

    def already_replayed(self, letter: DeadLetter) -> bool:
        pp = self.progress.get(letter.partition)
        return pp is not None and pp.is_replayed(letter.offset)

    async def replay(self, letter: DeadLetter) -> ReplayResult:
        event_id, _ = letter.event_ref()
        result = ReplayResult(letter.position, letter.handler, event_id, letter.original_topic, "")
        result.status, result.published_as = await self._publish(letter)
        self.results.append(result)
        if not self.dry_run and (self.settle_failures or not result.failed):
            self.progress.setdefault(letter.partition, PartitionProgress(0)).mark(letter.offset)
            self._unsaved += 1
            if self._unsaved >= COMMIT_EVERY:
                await self.save()
        return result

    async def _publish(self, letter: DeadLetter) -> tuple[str, str | None]:
        topic = letter.original_topic
        if topic is None:
            return f"failed: no {H_ORIGINAL_TOPIC} header", None
        if not self.dlq.topic_exists(topic):
            return f"failed: topic {topic} does not exist", None
        # Two handlers that dead-lettered one record: one replay reaches both again.
        first = self._sources.setdefault(letter.source, letter.position) if all(letter.source) else None
        if first not in (None, letter.position):
            return f"same record as {first}", None
        if self.dry_run:
            return "would replay", None
        return "replayed", await self.dlq.publish(letter, topic)

    async def save(self) -> None:
        if self._unsaved and not self.dry_run:
            await self.dlq.save_progress(self.progress)
        self._unsaved = 0


# --- output -----------------------------------------------------------------------------------


def _cell(value: object, width: int | None) -> str:
    text = "-" if value is None or value == "" else str(value)
    text = " ".join(text.split())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def render_table(
    rows: Sequence[Mapping[str, object]], columns: Sequence[str], widths: Mapping[str, int] | None = None
) -> str:
    """Rows as left-aligned columns under upper-case headings; long cells are cut to `widths`."""
    cells = [[_cell(row.get(c), (widths or {}).get(c)) for c in columns] for row in rows]
    titles = [c.upper().replace("_", " ") for c in columns]
    sizes = [max([len(t), *(len(r[i]) for r in cells)]) for i, t in enumerate(titles)]
    lines = [titles, *cells]
    return "\n".join("  ".join(v.ljust(sizes[i]) for i, v in enumerate(line)).rstrip() for line in lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def emit(args: argparse.Namespace, data: object, text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False) if args.json else text())


LIST_COLUMNS = (
    "dead_letter",
    "failed_at",
    "handler",
    "reason",
    "attempts",
    "error_type",
    "source_topic",
    "event_type",
    "event_id",
    "replayed",
)
LIST_WIDTHS = {"reason": 48, "handler": 48, "source_topic": 40}
REPLAY_COLUMNS = ("dead_letter", "handler", "event_id", "topic", "published_as", "status")


# --- commands ---------------------------------------------------------------------------------


def _matches(letter: DeadLetter, args: argparse.Namespace) -> bool:
    return (args.handler is None or letter.handler == args.handler) and (
        args.source_topic is None or letter.original_topic == args.source_topic
    )


async def cmd_dlq_list(args: argparse.Namespace, settings: KafkaSettings) -> int:
    async with DeadLetterTopic(settings, args.topic, args.progress_group) as dlq:
        progress = await dlq.progress()
        letters = [letter async for letter in dlq.read() if _matches(letter, args)]
    letters.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    shown = letters[-args.limit :] if args.limit else letters
    rows = []
    for letter in shown:
        pp = progress.get(letter.partition)
        rows.append({**letter.summary(), "replayed": bool(pp and pp.is_replayed(letter.offset))})

    def text() -> str:
        table_rows = [
            {**r, "failed_at": _short_time(r["failed_at"]), "replayed": "yes" if r["replayed"] else "no"}
            for r in rows
        ]
        heading = f"{_count(len(letters), 'dead letter')} on {args.topic}" + (
            f" (the last {len(shown)} shown)" if len(shown) < len(letters) else ""
        )
        return heading + "\n" + render_table(table_rows, LIST_COLUMNS, LIST_WIDTHS) if rows else heading

    emit(args, rows, text)
    return 0


async def cmd_dlq_show(args: argparse.Namespace, settings: KafkaSettings) -> int:
    partition, offset = args.position
    async with DeadLetterTopic(settings, args.topic, args.progress_group) as dlq:
        letter = await dlq.read_one(partition, offset)
        progress = await dlq.progress()
    details = letter.details()
    pp = progress.get(partition)
    details["replayed"] = bool(pp and pp.is_replayed(offset))
    emit(args, details, lambda: _show_text(details))
    return 0


def _short_time(iso: str | None) -> str | None:
    """``2025-05-01T09:00:03.123+00:00`` -> ``2025-05-01 09:00:03`` (UTC) for tables."""
    try:
        return datetime.fromisoformat(iso or "").astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _show_text(details: Mapping[str, Any]) -> str:
    headers: Mapping[str, Any] = details["headers"]
    width = max((len(k) for k in headers), default=0)
    body = details["body"]
    lines = [
        f"dead letter {details['dead_letter']}   written {details['timestamp']}",
        f"key: {details['key']}",
        f"replayed: {'yes' if details['replayed'] else 'no'}",
        "headers:",
        *(f"  {k.ljust(width)}  {v}" for k, v in headers.items()),
        "body:",
        body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False),
    ]
    return "\n".join(lines)


async def cmd_dlq_replay(args: argparse.Namespace, settings: KafkaSettings) -> int:
    if bool(args.positions) == bool(args.all):
        raise CliError("name dead letters as PARTITION:OFFSET, or pass --all")
    if args.positions and (args.handler or args.source_topic):
        raise CliError("--handler and --source-topic filter --all only")
    async with DeadLetterTopic(settings, args.topic, args.progress_group) as dlq:
        replayer = Replayer(dlq, await dlq.progress(), dry_run=args.dry_run, settle_failures=args.all)
        try:
            if args.all:
                await _replay_all(dlq, replayer, args)
            else:
                for partition, offset in args.positions:
                    await replayer.replay(await dlq.read_one(partition, offset))
        finally:
            await replayer.save()
    results = replayer.results
    rows = [dataclasses.asdict(r) for r in results]
    emit(args, rows, lambda: _replay_text(results, args))
    return 1 if any(r.failed for r in results) else 0


async def _replay_all(dlq: DeadLetterTopic, replayer: Replayer, args: argparse.Namespace) -> None:
    starts = {p: pp.watermark for p, pp in replayer.progress.items()}
    async for letter in dlq.read(starts):
        if _matches(letter, args) and not replayer.already_replayed(letter):
            await replayer.replay(letter)


def _replay_text(results: Sequence[ReplayResult], args: argparse.Namespace) -> str:
    if not results:
        return "nothing to replay" + (" (every matching dead letter was replayed before)" if args.all else "")
    counts: dict[str, int] = {}
    for result in results:
        status = result.status.split(":")[0].split(" as ")[0]
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    rows = [dataclasses.asdict(r) for r in results]
    table = render_table(rows, REPLAY_COLUMNS, {"handler": 48})
    return f"{table}\n{_count(len(results), 'dead letter')} from {args.topic}: {summary}"


LAG_COLUMNS = ("group", "topic", "partition", "committed", "end", "lag")


async def cmd_lag(args: argparse.Namespace, settings: KafkaSettings) -> int:
    lags = await group_lags(settings, args.group or None)
    if args.lagging:
        lags = [lag for lag in lags if lag.lag > 0]
    rows = [dataclasses.asdict(lag) for lag in lags]
    emit(args, rows, lambda: _lag_text(lags))
    return 0


def _lag_text(lags: Sequence[GroupLag]) -> str:
    if not lags:
        return "no partitions to report"
    groups = {lag.group for lag in lags}
    total = sum(lag.lag for lag in lags)
    rows = [dataclasses.asdict(lag) for lag in lags]
    return render_table(rows, LAG_COLUMNS) + f"\ntotal lag {total} over {_count(len(groups), 'group')}"


# --- delegated commands -----------------------------------------------------------------------


def _load_optional(module: str, attribute: str) -> Callable[..., Any] | None:
    """`module.attribute`, or None when that module (not one it imports) is not installed."""
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and (module == error.name or module.startswith(error.name + ".")):
            return None
        raise
    found: Callable[..., Any] | None = getattr(loaded, attribute, None)
    return found


def run_jobs(argv: Sequence[str]) -> int:
    """``jobs ...`` is the scheduler's own CLI: ``schedulers.cli.main(argv)``."""
    main_ = _load_optional("schedulers.cli", "main")
    if main_ is None:
        print("jobs: not available here (schedulers.cli is not installed)", file=sys.stderr)
        return 1
    return int(main_(list(argv)) or 0)


async def cmd_broadcast_progress(args: argparse.Namespace, settings: KafkaSettings) -> int:
    """``core.telegram.broadcasts.broadcast_progress(session, broadcast_id)`` read from PostgreSQL."""
    progress_of = _load_optional("core.telegram.broadcasts", "broadcast_progress")
    if progress_of is None:
        raise CliError("broadcast progress is not available here (core.telegram.broadcasts is not installed)")
    database = load_database_settings()
    engine = create_engine(database)
    try:
        async with create_session_factory(engine)() as session:
            progress = await progress_of(session, args.broadcast_id)
    except (OSError, SQLAlchemyError) as error:
        raise CliError(f"PostgreSQL at {database.safe_url()}: {type(error).__name__}") from None
    finally:
        await engine.dispose()
    if progress is None:
        raise CliError(f"no broadcast {args.broadcast_id!r}")
    data = _as_mapping(progress)
    if "finished" not in data and hasattr(progress, "finished"):
        data["finished"] = bool(progress.finished)
    emit(
        args,
        data,
        lambda: render_table([{"field": k, "value": v} for k, v in data.items()], ("field", "value")),
    )
    return 0


def _as_mapping(result: Any) -> dict[str, Any]:
    if callable(getattr(result, "as_dict", None)):
        return dict(result.as_dict())
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return dict(result)


# --- parser and entry point -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.cli", description="DianaBot jobs: operator tools.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_dlq(commands, common)
    lag = commands.add_parser("lag", parents=[common], help="consumer-group lag per partition")
    lag.add_argument("--group", action="append", help="only this group (repeatable); default: dianabot.*")
    lag.add_argument("--lagging", action="store_true", help="only partitions with lag > 0")
    lag.set_defaults(run=cmd_lag)
    jobs = commands.add_parser("jobs", help="scheduled jobs: jobs list | jobs trigger NAME (schedulers.cli)")
    jobs.add_argument("args", nargs=argparse.REMAINDER, help="list | trigger NAME")
    broadcast = commands.add_parser("broadcast", help="broadcasts")
    broadcast_commands = broadcast.add_subparsers(dest="broadcast_command", required=True, metavar="COMMAND")
    progress = broadcast_commands.add_parser("progress", parents=[common], help="a broadcast's progress")
    progress.add_argument("broadcast_id", metavar="ID")
    progress.set_defaults(run=cmd_broadcast_progress)
    return parser


def _add_dlq(commands: Any, common: argparse.ArgumentParser) -> None:
    dlq_common = argparse.ArgumentParser(add_help=False, parents=[common])
    dlq_common.add_argument("--topic", default=DEAD_LETTERS.name, help="the dead-letter topic (%(default)s)")
    dlq_common.add_argument(
        "--progress-group", default=PROGRESS_GROUP, help="group recording replays (%(default)s)"
    )
    dlq = commands.add_parser("dlq", help="dead letters: list, show, replay")
    sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", parents=[dlq_common], help="a table of dead letters, oldest first")
    _add_filters(listing)
    listing.add_argument(
        "--limit", type=int, default=50, help="show the last N (0: all; default %(default)s)"
    )
    listing.set_defaults(run=cmd_dlq_list)
    show = sub.add_parser("show", parents=[dlq_common], help="one dead letter's headers and body")
    show.add_argument("position", type=parse_position, metavar="PARTITION:OFFSET")
    show.set_defaults(run=cmd_dlq_show)
    replay = sub.add_parser("replay", parents=[dlq_common], help="publish dead letters to their source topic")
    replay.add_argument("positions", nargs="*", type=parse_position, metavar="PARTITION:OFFSET")
    replay.add_argument("--all", action="store_true", help="every dead letter not replayed before")
    _add_filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed, publish nothing")
    replay.set_defaults(run=cmd_dlq_replay)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--handler", help="only dead letters of this handler (dianabot.module.action)")
    parser.add_argument("--source-topic", help="only dead letters that first entered this topic")


async def _run(
    command: Callable[[argparse.Namespace, KafkaSettings], Awaitable[int]],
    args: argparse.Namespace,
    settings: KafkaSettings,
) -> int:
    try:
        return await command(args, settings)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except (KafkaConnectionError, OSError) as error:
        print(
            f"error: Kafka is unreachable at {settings.bootstrap_servers}: {type(error).__name__}",
            file=sys.stderr,
        )
    except KafkaError as error:
        print(f"error: Kafka at {settings.bootstrap_servers} refused: {error}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["jobs"]:  # its options are the scheduler CLI's, not ours
        return run_jobs(arguments[1:])
    args = build_parser().parse_args(arguments)
    try:
        settings = load_kafka_settings()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    # aiokafka logs every failed connection attempt; the one-line error says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(_run(args.run, args, settings))


if __name__ == "__main__":
    sys.exit(main())
