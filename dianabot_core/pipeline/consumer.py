"""FastStream wiring: every handler becomes batch consumers with manual commits.

For each handler and each topic lane it listens to, one consumer group reads the source topic.
Its retries go to one topic per attempt (``{group}.retry.{n}``); all retry topics of the handlers
of one source topic are read by one shared group (``{topic}.retries``), so a process runs one
retry consumer per lane instead of one per handler and attempt (idle consumers cost CPU: each
polls and heartbeats). A retry record not due soon pauses its partition until it is due rather
than holding the shared poll loop (see ``_defer``). Critical and bulk lanes keep separate
retry consumers, as they keep separate main ones. Offsets are committed (``message.ack()``) only
after the batch's effects are committed and its failures are durably re-published; an
infrastructure failure rewinds the batch (``message.nack()``) and backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from types import MethodType
from typing import Annotated, Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaRouter

from dianabot_contracts.schema import DocumentedAs, record_type, topic_record_type
from dianabot_contracts.topics import TOPICS, TopicSpec
from dianabot_core import metrics
from dianabot_core.pipeline import lenient_records
from dianabot_core.pipeline.handlers import HandlerSpec, retry_group
from dianabot_core.pipeline.records import Record, header_text
from dianabot_core.pipeline.routing import longest_wait_s
from dianabot_core.pipeline.runner import (
    BatchReport,
    Deferred,
    HandlerRunner,
    PipelineDeps,
    Progress,
    first_error,
)

logger = logging.getLogger("dianabot.pipeline")

# The longest wait between two tries of a rewound batch during an outage: how late, at worst, a
# lane resumes after the database or Kafka is back (30 s made recoveries under `make chaos` take
# up to 30 s). A try is one failed connection per consumer group: cheap at this pace.
MAX_BACKOFF_S = 10.0
POLL_MARGIN_S = 300.0
# How often an idle consumer wakes: its long poll, its fetch's wait at the broker, and aiokafka's
# background fetch loop (``consumer_timeout_ms``, 200 ms by default: five wake-ups a second per
# consumer, each walking every assigned partition, was most of an idle process's CPU). Records and
# rebalances wake them at once; only a partition resumed after a pause waits for the next fetch.
IDLE_POLL_MS = 5_000
# A shared retry consumer waits in the batch for records due this soon; a later one pauses its
# partition until due (then it is fetched within IDLE_POLL_MS).
RETRY_WAIT_UP_TO_S = 2.0


@dataclass(frozen=True)
class TopicDeclaration:
    name: str
    partitions: int
    retention_ms: int


def _text_headers(record: Record) -> Record:
    return dataclasses.replace(
        record, headers=[(k, header_text(v).encode()) for k, v in record.headers or ()]
    )


def _clean(value: bytes | None) -> bool:
    if value is None:
        return False
    try:
        bytes(value).decode()
    except UnicodeDecodeError:
        return False
    return True


async def total_parser(records: tuple[Record, ...], original: Callable[[Any], Awaitable[Any]]) -> Any:
    """FastStream's batch parser decodes every header value as UTF-8: a null or binary value
    (both legal in Kafka) would raise inside FastStream, which swallows the batch. It only ever
    sees text headers here; the pipeline reads the records exactly as they arrived."""
    if all(_clean(v) for r in records for _, v in r.headers or ()):
        return await original(records)
    message = await original(tuple(_text_headers(r) for r in records))
    message.raw_message = records
    return message


async def the_message_itself(message: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """The handler's argument is FastStream's message, not a decoded body: the pipeline decodes the
    raw records itself, so bad JSON becomes a dead letter. Taking the message as a second
    parameter (``message: KafkaMessage``, a context field) cost every batch a hop through
    fast_depends' thread pool: about 5 % of a busy process's time, and a GIL handover in its latency.
    """
    return message


class BatchConsumer:
    """Commits after its runners succeed; on an outage rewinds and waits, doubling up to 10 s.

    One runner per topic it reads: a source topic's handler, or, for a shared retry consumer, the
    handler and attempt of each retry topic (all topics of a batch at once).
    """

    def __init__(self, runners: Mapping[str, HandlerRunner], group: str) -> None:
        self.runners = dict(runners)
        self.group = group
        self._clock = next(iter(self.runners.values())).deps.clock
        self._backoff_s = 0.0

    async def consume(self, message: Any) -> None:
        records: tuple[Record, ...] = message.raw_message
        try:
            report = await self.process(records, functools.partial(_commit_done, message.consumer))
        except Exception as error:  # whatever failed, the batch is re-read: never skipped
            self._backoff_s = min(MAX_BACKOFF_S, max(0.5, self._backoff_s * 2))
            metrics.CONSUMER_STALLS.labels(self.group).inc()
            logger.error(
                "batch of %d rewound after %s: %s; retrying in %.1fs",
                len(records),
                type(error).__name__,
                error,
                self._backoff_s,
                extra={"group": self.group},
            )
            await message.nack()
            await asyncio.sleep(self._backoff_s)
            return
        self._backoff_s = 0.0
        if report.deferred:
            _defer(message.consumer, report.deferred, self._clock.now())
        await message.ack()

    async def process(self, records: tuple[Record, ...], progress: Progress | None = None) -> BatchReport:
        by_topic: dict[str, list[Record]] = defaultdict(list)
        for record in records:
            by_topic[record.topic].append(record)
        if len(by_topic) == 1:  # a source topic's batch: no task group on the hot path
            [(topic, topic_records)] = by_topic.items()
            return await self.runners[topic].process(topic_records, progress)
        report = BatchReport()
        try:
            async with asyncio.TaskGroup() as tasks:
                runs = [tasks.create_task(self.runners[t].process(rs)) for t, rs in by_topic.items()]
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        for run in runs:
            report.add(run.result())
        return report


async def _commit_done(consumer: AIOKafkaConsumer, done: Iterable[Record]) -> None:
    """Commit past the records of a batch that are done while the rest of it is still running.

    Only a hint of progress: the batch's own commit follows. One refused (the partition moved to
    another member meanwhile) costs nothing but a re-read that the ledger turns into duplicates.
    """
    offsets: dict[TopicPartition, int] = {}
    for record in done:
        offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
    assigned = consumer.assignment()
    if not (mine := {tp: offset for tp, offset in offsets.items() if tp in assigned}):
        return
    try:
        await consumer.commit(mine)
    except Exception as error:
        logger.info("progress commit skipped: %s: %s", type(error).__name__, error)


def _defer(consumer: AIOKafkaConsumer, deferred: Iterable[Deferred], now: Any) -> None:
    """Rewind each deferred partition to its waiting record and pause it until that is due; the
    commit that follows stores the rewound position, so the record is re-read after a crash too.
    A rebalance forgets pauses: the record is then read again and deferred again."""
    loop = asyncio.get_running_loop()
    for item in deferred:
        partition = TopicPartition(item.topic, item.partition)
        consumer.seek(partition, item.offset)
        consumer.pause(partition)
        loop.call_later(max(0.0, (item.due_at - now).total_seconds()), _resume, consumer, partition)


def _resume(consumer: AIOKafkaConsumer, partition: TopicPartition) -> None:
    if partition in consumer.assignment():
        consumer.resume(partition)


def max_poll_interval_ms(spec: HandlerSpec[Any], stage: int) -> int:
    """How long one batch may keep its consumer from polling before Kafka gives its partitions away.

    The worst batch: a retry stage first sleeps until its last record is due, then the fast path
    and the one-by-one fallback each run every event up to its time limit; plus a margin for the
    ledger, dead letters and commits. A shorter interval would rebalance a healthy slow batch.
    """
    waiting_s = longest_wait_s(spec.retry_delays_s, stage, spec.retry_jitter) if stage else 0.0
    working_s = 2 * spec.batch_size * spec.timeout_s
    return int((waiting_s + working_s + POLL_MARGIN_S) * 1000)


def subscribe_handlers(
    router: KafkaRouter, specs: Iterable[HandlerSpec[Any]], deps: PipelineDeps, **consumer_options: Any
) -> list[TopicDeclaration]:
    """Register every handler's consumers and the shared retry consumer of each source topic;
    return the retry topics to declare."""
    lenient_records.install()
    declarations: list[TopicDeclaration] = []
    retry_runners: dict[str, dict[str, HandlerRunner]] = defaultdict(dict)
    retry_specs: dict[str, list[HandlerSpec[Any]]] = defaultdict(list)
    options = {
        "batch_timeout_ms": IDLE_POLL_MS,
        "fetch_max_wait_ms": IDLE_POLL_MS,
        "consumer_timeout_ms": IDLE_POLL_MS,
        **consumer_options,
    }
    for spec in specs:
        for topic in spec.topics:
            group = spec.group_for(topic)
            consumer = BatchConsumer({topic.name: HandlerRunner(spec, group, deps)}, group)
            documented = f"{spec.name} handles {', '.join(sorted(spec.event_types))}"
            _register(
                router,
                consumer,
                [topic.name],
                group,
                documented,
                spec.batch_size,
                max_poll_interval_ms(spec, 0),
                options,
            )
            for attempt in range(1, len(spec.retry_delays_s) + 1):
                retry_topic = spec.retry_topic(group, attempt)
                declarations.append(TopicDeclaration(retry_topic, topic.partitions, topic.retention_ms))
                retry_runners[topic.name][retry_topic] = HandlerRunner(
                    spec, group, deps, stage=attempt, wait_up_to_s=RETRY_WAIT_UP_TO_S
                )
            retry_specs[topic.name].append(spec)
    for source, runners in retry_runners.items():
        group = retry_group(source)
        lane_specs = retry_specs[source]
        _register(
            router,
            BatchConsumer(runners, group),
            sorted(runners),
            group,
            "retries of " + ", ".join(sorted(s.name for s in lane_specs)),
            min(s.batch_size for s in lane_specs),  # no handler gets a bigger batch than it asked for
            max(max_poll_interval_ms(s, 0) for s in lane_specs) + int(RETRY_WAIT_UP_TO_S * 1000),
            options,
        )
    return declarations


def _register(
    router: KafkaRouter,
    consumer: BatchConsumer,
    topics: list[str],
    group: str,
    documented: str,
    batch_size: int,
    poll_ms: int,
    options: dict[str, Any],
) -> None:
    events = tuple({e for r in consumer.runners.values() for e in r.spec.events})

    async def handle(batch: Any) -> None:
        await consumer.consume(batch)

    # AsyncAPI: FastStream documents a subscriber's message by the body's annotation. The decoder
    # hands over the message itself (validated as Any); DocumentedAs only replaces the documented
    # schema with one record's: the envelope(s) this consumer takes. Set as an object: a string
    # annotation naming a local of this function would not resolve once FastStream builds the
    # handler's model.
    handle.__annotations__["batch"] = Annotated[Any, DocumentedAs(record_type(events))]
    subscriber = router.subscriber(
        *topics,
        group_id=group,
        batch=True,
        max_records=batch_size,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        max_poll_interval_ms=poll_ms,
        parser=total_parser,
        decoder=the_message_itself,
        # One topic: channel "{topic}:{group}"; several: FastStream names each "{title}:{topic}".
        title=f"{topics[0]}:{group}" if len(topics) == 1 else group,
        description=f"Consumer group {group}: {documented}. Batches of up to "
        f"{batch_size} records; each record's value is one event envelope (JSON), its key the "
        "aggregate id.",
        **options,
    )
    subscriber(handle)
    subscriber.get_msg = MethodType(_long_poll, subscriber)
    subscriber.start = functools.partial(start_until_kafka_answers, subscriber, subscriber.start, group)


async def start_until_kafka_answers(
    subscriber: Any, start: Callable[[], Awaitable[None]], group: str, *, max_backoff_s: float = 10.0
) -> None:
    """Start a subscriber, waiting out a Kafka outage instead of failing the process.

    FastStream starts a process's subscribers one after another; a broker restart in the middle
    (or any moment Kafka does not answer a bootstrap) made the start, and so the process, fail.
    Whether Kafka is reachable at all was checked before the first subscriber (one readable line).
    """
    backoff_s = 0.5
    while True:
        try:
            await start()
            return
        except (KafkaError, OSError) as error:
            if (consumer := getattr(subscriber, "consumer", None)) is not None:
                subscriber.consumer = None
                with contextlib.suppress(Exception):
                    await consumer.stop()
            logger.warning(
                "consumer group %s could not start (%s: %s); retrying in %.1fs",
                group,
                type(error).__name__,
                error,
                backoff_s,
            )
            await asyncio.sleep(backoff_s)
            backoff_s = min(max_backoff_s, backoff_s * 2)


async def _long_poll(subscriber: Any, consumer: AIOKafkaConsumer) -> tuple[Record, ...]:
    """FastStream's batch poll, without its sleep after an empty poll.

    ``getmany`` already returns as soon as a record arrives, so a long ``batch_timeout_ms`` costs
    no latency; FastStream then sleeps that long again after an empty poll, which either delays
    the first event after a quiet spell (long timeout) or wakes a hundred idle consumers a hundred
    times a second (short timeout). Without the sleep, an idle consumer wakes once per timeout.
    """
    batches = await consumer.getmany(
        timeout_ms=subscriber.batch_timeout_ms, max_records=subscriber.max_records
    )
    _served_last(consumer, batches)
    return tuple(chain.from_iterable(batches.values()))


def _served_last(consumer: AIOKafkaConsumer, served: Iterable[TopicPartition]) -> None:
    """Let the partitions of a backlog take turns, a batch each.

    aiokafka hands out one partition's buffered fetch (up to 1 MB of records) until it is empty
    before it looks at the next. On a slow lane (notifications: 25 records a batch, seconds each)
    one partition's backlog kept every other partition waiting for minutes in `make chaos`. The
    partitions just served go behind the others in the fetcher's queue (aiokafka < 0.15 keeps it
    in an OrderedDict; without it, nothing changes).
    """
    buffered = getattr(getattr(consumer, "_fetcher", None), "_records", None)
    if not isinstance(buffered, OrderedDict):
        return
    for partition in served:
        if partition in buffered:
            buffered.move_to_end(partition)


def document_topics(router: KafkaRouter, topics: Iterable[TopicSpec] = TOPICS) -> None:
    """AsyncAPI: every registry topic and the events it carries, as specification-only publishers
    (the outbox relay and the failure router are what actually publish to them)."""
    for topic in topics:
        router.publisher(
            topic.name,
            description=f"{topic.description} Partitions: {topic.partitions}; "
            f"key: {topic.key}; critical: {'yes' if topic.critical else 'no'}.",
            schema=topic_record_type(topic),
            include_in_schema=True,
        )


def topic_declarations(specs: Iterable[TopicSpec] = TOPICS) -> list[TopicDeclaration]:
    return [TopicDeclaration(t.name, t.partitions, t.retention_ms) for t in specs]


async def declare_topics(
    admin: AIOKafkaAdminClient, declarations: Iterable[TopicDeclaration], replication_factor: int = 1
) -> list[str]:
    """Create missing topics with their partitions and retention; return the names created.

    Existing topics are left alone (their partition count is never changed behind an operator's back).
    """
    wanted = {d.name: d for d in declarations}
    new_topics = [
        NewTopic(
            d.name,
            num_partitions=d.partitions,
            replication_factor=replication_factor,
            topic_configs={"retention.ms": str(d.retention_ms)},
        )
        for d in wanted.values()
    ]
    if not new_topics:
        return []
    response = await admin.create_topics(new_topics, timeout_ms=30_000)
    created = []
    for topic_error in response.topic_errors:
        name, code = topic_error[0], topic_error[1]
        if code == 0:
            created.append(name)
        elif code != TopicAlreadyExistsError.errno:
            raise RuntimeError(f"could not create topic {name}: error code {code}")
    return created
