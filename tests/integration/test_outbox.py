"""The transactional outbox on the real PostgreSQL and Kafka.

Every test relays only its own topic (created per test) under its own advisory lock key, so rows
other tests leave in the shared ``outbox`` table are never touched and nothing is truncated.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from dianabot_contracts.envelope import EventEnvelope
from dianabot_core.kafka import create_broker
from dianabot_core.outbox import OutboxRelay, add_to_outbox
from dianabot_core.publisher import EventPublisher
from dianabot_core.settings import Settings
from tests.integration.outbox_support import (
    PRODUCER,
    NewTopic,
    RelayProcess,
    SessionFactory,
    activity,
    all_published,
    eventually,
    first_seen_per_key,
    new_lock_key,
    read_topic,
    rows_of,
    unpublished,
    write,
    written_per_key,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(kafka: Settings) -> AsyncIterator[EventPublisher]:
    broker = create_broker(kafka.kafka)
    await broker.connect()
    yield EventPublisher(broker, PRODUCER)
    await broker.stop()


# --- committed events are relayed, rolled-back ones never are -----------------------------------


async def test_committed_events_are_relayed_and_a_rolled_back_one_never_is(
    kafka: Settings, session_factory: SessionFactory, new_topic: NewTopic, publisher: EventPublisher
) -> None:
    topic = await new_topic(partitions=3)
    tracer = TracerProvider().get_tracer("outbox-test")
    payloads = [activity(i % 17, i) for i in range(300)]

    with tracer.start_as_current_span("bot request") as span:
        committed = await write(session_factory, topic, payloads[:150], per_transaction=10)
        async with session_factory() as session:
            await session.begin()
            rolled_back = await add_to_outbox(session, activity(99, -1), producer=PRODUCER, topic=topic)
            await session.flush()  # the row reached the database, inside the transaction
            await session.rollback()
        committed += await write(session_factory, topic, payloads[150:], per_transaction=10)
    trace_id = format(span.get_span_context().trace_id, "032x")

    relay = OutboxRelay(session_factory, publisher, topics={topic}, lock_key=new_lock_key())
    started = time.perf_counter()
    passes = []
    while published := await relay.relay_once():
        passes.append(published)
    elapsed = time.perf_counter() - started
    print(
        f"\nrelayed {sum(passes)} events in {elapsed:.3f}s ({sum(passes) / elapsed:.0f}/s), passes {passes}"
    )

    assert sum(passes) == 300
    rows = await rows_of(session_factory, topic)
    assert [event_id for event_id, _, _ in rows] == [e.event_id for e in committed]
    assert all(published_at is not None for _, _, published_at in rows)

    records = await read_topic(kafka, topic, partitions=3)
    assert Counter(r.event_id for r in records) == Counter({e.event_id: 1 for e in committed})
    assert rolled_back.event_id not in {r.event_id for r in records}
    by_id = {e.event_id: e for e in committed}
    for record in records:
        envelope = EventEnvelope.model_validate(record.body)
        assert envelope == by_id[record.event_id]
        assert record.key == envelope.key
        assert record.headers["event_type"] == "user.activity"
        assert record.headers["content-type"] == "application/json"
        # The writer's trace continues on the record.
        assert record.headers["traceparent"].split("-")[1] == trace_id
    # One key's events arrive in the order they were written.
    assert first_seen_per_key(records) == written_per_key(rows)
    assert await relay.relay_once() == 0


# --- a relay killed mid-run: at least once, never lost ------------------------------------------


async def test_a_relay_killed_mid_run_republishes_but_never_loses_an_event(
    kafka: Settings, session_factory: SessionFactory, new_topic: NewTopic, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=6)
    written = await write(
        session_factory, topic, [activity(i % 50, i) for i in range(2000)], per_transaction=200
    )
    relay = RelayProcess(
        kafka, topic, new_lock_key(), tmp_path / "relay.log", "--batch-size=100", "--pause-s=0.3"
    )

    kills = 0
    in_flight_at_kill = []
    try:
        for _ in range(3):
            await relay.start()
            # The 2nd acknowledged batch of this run is published but not yet marked when killed.
            in_flight_at_kill.append(await relay.kill_after_acks(2))
            kills += 1
            pending = await unpublished(session_factory, topic)
            assert 0 < pending < 2000, "each kill lands mid-run, with rows still pending"
        await relay.start()
        await all_published(session_factory, topic, within=120)
        assert await relay.stop() == 0
    finally:
        if relay.process is not None:
            relay.process.kill()
            await relay.process.wait()

    rows = await rows_of(session_factory, topic)
    assert len(rows) == 2000
    assert all(published_at is not None for _, _, published_at in rows)
    records = await read_topic(kafka, topic, partitions=6)
    counts = Counter(r.event_id for r in records)
    duplicates = len(records) - len(counts)
    print(
        f"\ncrash test: {kills} SIGKILLs, {len(written)} events, {len(records)} records on Kafka, "
        f"{len(counts)} distinct, {duplicates} duplicates (unmarked batches at kill: {in_flight_at_kill})"
    )
    assert kills >= 2
    assert set(counts) == {e.event_id for e in written}  # every event, at least once
    # Exactly the batches that were acknowledged but not marked when killed came again.
    assert duplicates == sum(in_flight_at_kill)
    assert max(counts.values()) == 2
    # Dropping repeats as a ledger does, each key's events are still in the order written.
    assert first_seen_per_key(records) == written_per_key(rows)


# --- two relays at once: one publishes, order per key holds -------------------------------------


class _CountingPublisher(EventPublisher):
    def __init__(self, publisher: EventPublisher, log: list[str], name: str) -> None:
        super().__init__(publisher.broker, publisher.producer)
        self._log = log
        self._name = name

    async def enqueue(
        self,
        topic: str,
        *,
        key: str,
        body: bytes,
        headers: Mapping[str, str],
        correlation_id: str | None = None,
    ) -> asyncio.Future[Any]:
        self._log.append(self._name)
        return await super().enqueue(
            topic, key=key, body=body, headers=headers, correlation_id=correlation_id
        )


async def test_two_relays_at_once_only_the_lock_holder_publishes_and_key_order_holds(
    kafka: Settings, session_factory: SessionFactory, new_topic: NewTopic, publisher: EventPublisher
) -> None:
    topic = await new_topic(partitions=3)
    lock_key = new_lock_key()
    sent_by: list[str] = []
    relays = {
        name: OutboxRelay(
            session_factory,
            _CountingPublisher(publisher, sent_by, name),
            batch_size=50,
            poll_interval_s=0.02,
            standby_retry_s=0.1,
            topics={topic},
            lock_key=lock_key,
        )
        for name in ("a", "b")
    }
    stops = {name: asyncio.Event() for name in relays}
    tasks = {name: asyncio.create_task(relay.run(stops[name])) for name, relay in relays.items()}
    try:
        # Written while both relays poll, in many small transactions, 5 keys interleaved.
        await write(session_factory, topic, [activity(i % 5, i) for i in range(1000)], per_transaction=20)
        await all_published(session_factory, topic)
        first_phase = Counter(sent_by)
        assert len(first_phase) == 1, f"both relays published: {first_phase}"
        [(leader, sent)] = first_phase.items()
        assert sent == 1000

        # The leader stops; the standby takes the lock over and publishes what follows.
        stops[leader].set()
        await asyncio.wait_for(tasks[leader], timeout=10)
        del sent_by[:]
        await write(
            session_factory, topic, [activity(i % 5, i) for i in range(1000, 1500)], per_transaction=20
        )
        await all_published(session_factory, topic)
        standby = "b" if leader == "a" else "a"
        assert Counter(sent_by) == Counter({standby: 500})
    finally:
        for name, stop in stops.items():
            stop.set()
            await asyncio.wait_for(tasks[name], timeout=10)

    rows = await rows_of(session_factory, topic)
    records = await read_topic(kafka, topic, partitions=3)
    assert len(records) == 1500 == len({r.event_id for r in records})
    # Each key's events were consumed in outbox id order.
    consumed: dict[str, list[UUID]] = defaultdict(list)
    for record in records:
        consumed[record.key].append(record.event_id)
    assert dict(consumed) == written_per_key(rows)


# --- failures: the acknowledged prefix is kept, the relay loop survives -------------------------


class _FlakyPublisher(EventPublisher):
    """Fails the records whose (1-based) send number is in ``fail_ack`` (after sending the ones
    around it) or in ``fail_send`` (before sending anything more)."""

    def __init__(self, publisher: EventPublisher) -> None:
        super().__init__(publisher.broker, publisher.producer)
        self.sends = 0
        self.fail_ack: set[int] = set()
        self.fail_send: set[int] = set()

    async def enqueue(
        self,
        topic: str,
        *,
        key: str,
        body: bytes,
        headers: Mapping[str, str],
        correlation_id: str | None = None,
    ) -> asyncio.Future[Any]:
        self.sends += 1
        if self.sends in self.fail_send:
            raise ConnectionError("broker unreachable")
        if self.sends in self.fail_ack:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(TimeoutError("no acknowledgement"))
            return failed
        return await super().enqueue(
            topic, key=key, body=body, headers=headers, correlation_id=correlation_id
        )


async def test_a_failed_record_keeps_the_acknowledged_prefix_and_the_loop_retries(
    kafka: Settings,
    session_factory: SessionFactory,
    new_topic: NewTopic,
    publisher: EventPublisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = await new_topic(partitions=1)
    written = await write(session_factory, topic, [activity(1, i) for i in range(20)], per_transaction=20)
    flaky = _FlakyPublisher(publisher)
    relay = OutboxRelay(session_factory, flaky, topics={topic}, lock_key=new_lock_key(), poll_interval_s=0.02)

    flaky.fail_ack = {8}
    with pytest.raises(TimeoutError, match="no acknowledgement"):
        await relay.relay_once()
    marked = [published_at is not None for _, _, published_at in await rows_of(session_factory, topic)]
    assert marked == [True] * 7 + [False] * 13

    # The next two passes fail on their first send; the loop logs, backs off, and carries on.
    flaky.fail_send = {flaky.sends + 1, flaky.sends + 2}
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await all_published(session_factory, topic, within=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    failures = [r for r in caplog.records if r.name == "dianabot.outbox" and r.levelname == "ERROR"]
    assert len(failures) == 2
    assert all(r.getMessage() == "outbox relay pass failed" for r in failures)

    records = await read_topic(kafka, topic, partitions=1)
    # Records 9..20 were acknowledged in the failed pass but not marked: they came again.
    assert Counter(r.event_id for r in records) == {
        e.event_id: 2 if i >= 8 else 1 for i, e in enumerate(written)
    }
    assert [r.event_id for r in records][-13:] == [e.event_id for e in written[7:]]


async def test_the_relay_survives_losing_its_lock_connection(
    kafka: Settings,
    session_factory: SessionFactory,
    new_topic: NewTopic,
    publisher: EventPublisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = await new_topic(partitions=1)
    lock_key = new_lock_key()
    relay = OutboxRelay(session_factory, publisher, topics={topic}, lock_key=lock_key, poll_interval_s=0.02)
    holder = text(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = :high AND objid = :low AND objsubid = 1"
    ).bindparams(high=lock_key >> 32, low=lock_key & 0xFFFFFFFF)

    async def lock_holder() -> int | None:
        async with session_factory() as session:
            pid: int | None = await session.scalar(holder)
            return pid

    async def has_holder() -> bool:
        return await lock_holder() is not None

    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(has_holder, within=10)
        first = await lock_holder()
        async with session_factory() as session:
            await session.execute(text("SELECT pg_terminate_backend(:pid)").bindparams(pid=first))

        async def new_holder() -> bool:
            return (await lock_holder()) not in (None, first)

        await eventually(new_holder, within=15)
        payloads = [activity(1, i) for i in range(10)]
        written = await write(session_factory, topic, payloads, per_transaction=10)
        await all_published(session_factory, topic, within=15)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert not task.cancelled()
    assert task.exception() is None
    assert "outbox relay lost its lock connection" in [r.getMessage() for r in caplog.records]
    records = await read_topic(kafka, topic, partitions=1)
    assert [r.event_id for r in records] == [e.event_id for e in written]


async def test_the_writers_trace_continues_through_the_telemetry_middleware(
    kafka: Settings, session_factory: SessionFactory, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    broker = create_broker(kafka.kafka, middlewares=(KafkaTelemetryMiddleware(tracer_provider=provider),))
    await broker.connect()
    try:
        with provider.get_tracer("bot").start_as_current_span("bot request") as writer:
            [written] = await write(session_factory, topic, [activity(1, 0)], per_transaction=1)
        publisher = EventPublisher(broker, PRODUCER)
        relay = OutboxRelay(session_factory, publisher, topics={topic}, lock_key=new_lock_key())
        assert await relay.relay_once() == 1
    finally:
        await broker.stop()

    trace_id = writer.get_span_context().trace_id
    relay_spans = [s for s in spans.get_finished_spans() if s.name.startswith(topic)]
    assert {s.name for s in relay_spans} == {f"{topic} create", f"{topic} publish"}
    assert all(s.context is not None and s.context.trace_id == trace_id for s in relay_spans)
    [record] = await read_topic(kafka, topic, partitions=1)
    assert record.event_id == written.event_id
    assert record.headers["traceparent"].split("-")[1] == format(trace_id, "032x")


# --- an idle relay sleeps until a row is written ------------------------------------------------


async def test_an_idle_relay_wakes_when_a_row_is_committed_not_at_its_next_poll(
    kafka: Settings, session_factory: SessionFactory, new_topic: NewTopic, publisher: EventPublisher
) -> None:
    topic = await new_topic(partitions=1)
    # Polls only every 60 s while it listens: a row published sooner was announced by NOTIFY.
    relay = OutboxRelay(session_factory, publisher, topics={topic}, lock_key=new_lock_key(), idle_poll_s=60)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await write(session_factory, topic, [activity(1, 0)], per_transaction=1)
        await all_published(session_factory, topic, within=15)  # leading, listening, idle
        await asyncio.sleep(1)
        started = time.monotonic()
        await write(session_factory, topic, [activity(1, i) for i in range(1, 4)], per_transaction=3)
        await all_published(session_factory, topic, within=30)
        woke_after = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert task.exception() is None
    assert woke_after < 3
    records = await read_topic(kafka, topic, partitions=1)
    assert len(records) == 4
