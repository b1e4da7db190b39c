"""The pipeline on the real broker and database: idempotency, retries, dead letters, time limits."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_core.models import ProcessedEvent
from dianabot_core.pipeline import runner
from dianabot_core.pipeline.errors import PermanentError, TransientError
from dianabot_core.pipeline.handlers import BatchContext, Delivery, HandlerContext, HandlerGroup
from dianabot_core.settings import Settings
from tests.integration.pipeline_support import (
    RawProducer,
    committed_total,
    dead_letters_for,
    effects_of,
    ensure_effects_table,
    record_effect,
    running_consumers,
    unique_topic,
)


@pytest.fixture(autouse=True)
async def _effects(kafka: Settings, session_factory: async_sessionmaker[AsyncSession]) -> None:
    await ensure_effects_table(session_factory)


def _activity(user_id: int, kind: str = "message") -> EventEnvelope:
    return EventEnvelope.wrap(UserActivity(user_id=user_id, at=datetime.now(UTC), kind=kind), producer="test")


async def _effect_count(session_factory: async_sessionmaker[AsyncSession], handler: str) -> int:
    return len(await effects_of(session_factory, handler))


async def test_an_event_delivered_three_times_has_one_effect(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    topic = unique_topic()
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")

    @group.handler(UserActivity, action="count", topics=(topic,))
    async def count(event: UserActivity, ctx: HandlerContext) -> None:
        await record_effect(ctx, group.specs[0].name, ctx.envelope.key, 0)

    name = group.specs[0].name
    repeated, marker = _activity(1), _activity(2)
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_events(topic.name, [repeated, repeated])  # twice in one batch
        await producer.send_event(topic.name, repeated)  # and once more, later
        await producer.send_event(topic.name, marker)
        await _wait_for_effects(session_factory, name, 2)
        await asyncio.sleep(1)  # a late duplicate effect would show up here

    effects = await effects_of(session_factory, name)
    assert sorted(str(e.event_id) for e in effects) == sorted([str(repeated.event_id), str(marker.event_id)])
    async with session_factory() as session:
        ledger_rows = await session.scalar(
            select(func.count()).select_from(ProcessedEvent).where(ProcessedEvent.consumer == name)
        )
    assert ledger_rows == 2


async def _wait_for_effects(
    session_factory: async_sessionmaker[AsyncSession], handler: str, count: int, within: float = 60
) -> None:
    deadline = time.monotonic() + within
    while (found := await _effect_count(session_factory, handler)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{handler}: {found} effects, expected {count}")
        await asyncio.sleep(0.1)


async def test_a_transient_failure_is_retried_with_delays_without_blocking_other_keys(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    topic = unique_topic(partitions=1)  # one partition: the others share the failing event's partition
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")
    delays = (1.0, 2.0)
    attempts_seen: dict[int, float] = {}

    @group.handler(UserActivity, action="flaky", topics=(topic,), retry_delays_s=delays, retry_jitter=0.1)
    async def flaky(event: UserActivity, ctx: HandlerContext) -> None:
        if event.kind == "flaky":
            attempts_seen.setdefault(ctx.attempt, time.monotonic())
            if ctx.attempt < 2:
                raise TransientError("telegram is briefly down")
        await record_effect(ctx, group.specs[0].name, ctx.envelope.key, ctx.attempt)

    name = group.specs[0].name
    failing = _activity(100, kind="flaky")
    others = [_activity(200 + i) for i in range(20)]
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_event(topic.name, failing)
        await producer.send_events(topic.name, others)
        await _wait_for_effects(session_factory, name, len(others) + 1, within=30)

    effects = {str(e.event_id): e for e in await effects_of(session_factory, name)}
    flaky_effect = effects[str(failing.event_id)]
    assert flaky_effect.seq == 2  # succeeded on the second retry
    assert attempts_seen[1] - attempts_seen[0] >= delays[0]
    assert attempts_seen[2] - attempts_seen[1] >= delays[1]
    # Every other key was handled before the failing event's first retry even started.
    assert all(effects[str(o.event_id)].at < flaky_effect.at for o in others)  # type: ignore[operator]
    assert len(effects) == len(others) + 1


async def test_poison_messages_are_dead_lettered_with_reasons_and_do_not_stall(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    topic = unique_topic(partitions=1)
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")

    @group.handler(UserActivity, action="strict", topics=(topic,), retry_delays_s=(0.2,))
    async def strict(event: UserActivity, ctx: HandlerContext) -> None:
        if event.kind == "forbidden":
            raise PermanentError("user 7 may not do that")
        await record_effect(ctx, group.specs[0].name, ctx.envelope.key, 0)

    name = group.specs[0].name
    good = _activity(1)
    no_event_id = good.model_dump(mode="json")
    del no_event_id["event_id"]
    unknown_type = {
        **good.model_dump(mode="json"),
        "event_type": "user.teleported",
        "event_id": str(uuid.uuid4()),
    }
    bad_payload = {**good.model_dump(mode="json"), "payload": {"user_id": "x"}, "event_id": str(uuid.uuid4())}

    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_raw(topic.name, b"\xff not json at all")
        await producer.send_raw(topic.name, b"[1, 2, 3]")
        await producer.send_raw(topic.name, json.dumps(no_event_id).encode())
        await producer.send_raw(topic.name, json.dumps(unknown_type).encode())
        await producer.send_raw(
            topic.name, json.dumps(bad_payload).encode(), headers=[("trace", b"\xfe\xff")]
        )
        await producer.send_event(topic.name, _activity(7, kind="forbidden"))
        await producer.send_event(topic.name, good)
        await _wait_for_effects(session_factory, name, 1)
        letters = await dead_letters_for(kafka, name, expected=6)

    # The dead-letter topic is keyed like the source, so only per-key order holds there.
    reasons = sorted(letter["x-dlq-reason"] for letter in letters)
    assert reasons == sorted(
        [
            "malformed: body is not UTF-8 text",
            "malformed: body is not a JSON object",
            "malformed: envelope schema violation: event_id: Field required",
            "malformed: unknown event type 'user.teleported'",
            "malformed: user.activity payload schema violation: user_id: Input should be a valid integer, "
            "unable to parse string as an integer; at: Field required",
            "permanent: PermanentError",
        ]
    )
    forbidden = next(letter for letter in letters if letter["x-dlq-reason"].startswith("permanent"))
    assert forbidden["x-dlq-error-message"] == "user 7 may not do that"
    assert forbidden["x-dlq-attempts"] == "1"
    assert forbidden["x-original-topic"] == topic.name
    assert "[1, 2, 3]" in [letter["__value__"] for letter in letters]  # the original bytes are kept
    assert [e.event_id for e in await effects_of(session_factory, name)] == [good.event_id]


async def test_a_handler_over_its_time_limit_is_retried_then_dead_lettered(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    topic = unique_topic(partitions=1)
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")
    calls: dict[int, int] = defaultdict(int)

    @group.handler(UserActivity, action="slow", topics=(topic,), timeout_s=0.2, retry_delays_s=(0.3,))
    async def slow(event: UserActivity, ctx: HandlerContext) -> None:
        calls[ctx.attempt] += 1
        await asyncio.sleep(5)

    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        started = time.monotonic()
        await producer.send_event(topic.name, _activity(9))
        letters = await dead_letters_for(kafka, group.specs[0].name, expected=1)
        elapsed = time.monotonic() - started

    assert letters[0]["x-dlq-reason"] == "transient: TimeoutError (retries exhausted)"
    assert letters[0]["x-dlq-attempts"] == "2"
    assert set(calls) == {0, 1}
    assert elapsed < 4  # the 5 s sleep was cut off by the 0.2 s limit each time


async def test_a_retry_due_later_never_holds_up_another_handlers_retry_in_the_shared_consumer(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    topic = unique_topic(partitions=1)
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")
    first_seen: dict[str, float] = {}
    handled_at: dict[str, list[float]] = defaultdict(list)

    def failing_once(action: str, delay_s: float) -> None:
        @group.handler(
            UserActivity, action=action, topics=(topic,), retry_delays_s=(delay_s,), retry_jitter=0
        )
        async def handle(event: UserActivity, ctx: HandlerContext) -> None:
            if ctx.attempt == 0:
                first_seen.setdefault(action, time.monotonic())
                raise TransientError("briefly down")
            handled_at[action].append(time.monotonic())
            await record_effect(ctx, f"{group.module}.{action}", ctx.envelope.key, ctx.attempt)

    failing_once("late", 8.0)  # its retry pauses its partition instead of sleeping in the batch
    failing_once("soon", 0.5)
    async with RawProducer(kafka) as producer, running_consumers(kafka, [group]):
        await producer.send_event(topic.name, _activity(1))
        for name in ("soon", "late"):
            await _wait_for_effects(session_factory, f"{group.module}.{name}", 1, within=40)
        await asyncio.sleep(1)  # a second handling would show up here

    # Both retry topics are read by one consumer group of the topic.
    assert len(handled_at["soon"]) == len(handled_at["late"]) == 1
    assert handled_at["soon"][0] - first_seen["soon"] < 4.0  # not behind the late one's 8 s
    assert handled_at["late"][0] - first_seen["late"] >= 8.0  # and the late one not early


async def test_a_batch_of_slow_events_commits_its_effects_and_offsets_as_it_goes(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    admin: AIOKafkaAdminClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Telegram-bound handlers take 0.1 s and more per event under load: a 500-event batch used to
    hold every effect and the group's offset until its last event, so a lane crashed every few
    minutes committed nothing at all. Now a batch commits every PROGRESS_EVERY_S."""
    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.5)
    topic = unique_topic(partitions=1)
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")

    @group.handler(UserActivity, action="slow", topics=(topic,), batch_size=100)
    async def slow(event: UserActivity, ctx: HandlerContext) -> None:
        await asyncio.sleep(0.1)
        await record_effect(ctx, group.specs[0].name, ctx.envelope.key, 0)

    spec = group.specs[0]
    events = [_activity(300 + i) for i in range(60)]
    async with RawProducer(kafka) as producer:
        await producer.send_events(topic.name, events)  # all there before the consumer starts: one batch
    async with running_consumers(kafka, [group]):
        await _wait_for_effects(session_factory, spec.name, 15, within=30)
        committed = await committed_total(admin, spec.group_for(topic))
        in_flight = await _effect_count(session_factory, spec.name)
        assert 0 < committed <= in_flight < len(events)  # the batch is still running
        await _wait_for_effects(session_factory, spec.name, len(events), within=30)

    effects = await effects_of(session_factory, spec.name)
    assert sorted(str(e.event_id) for e in effects) == sorted(str(e.event_id) for e in events)


async def test_a_batch_handled_one_by_one_after_a_failure_commits_its_offsets_as_it_goes(
    kafka: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    admin: AIOKafkaAdminClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One bad event sends a batch handler's whole batch through the one-by-one fallback, where
    each event commits alone (notifications: a send each). That fallback used to commit the
    group's offsets only at its end: under repeated rebalances a batch of slow sends never got
    there and its partition made no progress for minutes (`make chaos`)."""
    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.5)
    topic = unique_topic(partitions=1)
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")
    bad_user = 300

    @group.batch_handler(UserActivity, action="slow", topics=(topic,), batch_size=100)
    async def slow(deliveries: Sequence[Delivery[UserActivity]], ctx: BatchContext) -> None:
        for delivery in deliveries:
            if delivery.payload.user_id == bad_user:
                raise PermanentError(f"user {bad_user} not found")
        for delivery in deliveries:
            await asyncio.sleep(0.1)
            await ctx.session.execute(
                text("INSERT INTO testing.effects (handler, event_id, key, seq) VALUES (:h, :e, :k, 0)"),
                {"h": group.specs[0].name, "e": delivery.envelope.event_id, "k": delivery.envelope.key},
            )

    spec = group.specs[0]
    events = [_activity(bad_user + i) for i in range(60)]
    async with RawProducer(kafka) as producer:
        await producer.send_events(topic.name, events)  # all there before the consumer starts: one batch
    async with running_consumers(kafka, [group]):
        await _wait_for_effects(session_factory, spec.name, 15, within=30)
        committed = await committed_total(admin, spec.group_for(topic))
        in_flight = await _effect_count(session_factory, spec.name)
        assert 0 < committed <= in_flight + 1 < len(events)  # + 1: the dead-lettered one
        await _wait_for_effects(session_factory, spec.name, len(events) - 1, within=30)

    effects = await effects_of(session_factory, spec.name)
    assert sorted(str(e.event_id) for e in effects) == sorted(str(e.event_id) for e in events[1:])


async def test_the_partitions_of_a_backlog_take_turns(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], admin: AIOKafkaAdminClient
) -> None:
    """aiokafka hands out one partition's fetched records (up to 1 MB) before the next partition's:
    on a slow lane one partition's backlog kept the others waiting for minutes (`make chaos`,
    notifications). Batches now take turns between the partitions that have records."""
    topic = unique_topic(partitions=3)
    await admin.create_topics([NewTopic(topic.name, num_partitions=3, replication_factor=1)])
    group = HandlerGroup(f"t{uuid.uuid4().hex[:8]}")

    @group.handler(UserActivity, action="record", topics=(topic,), batch_size=10)
    async def record(event: UserActivity, ctx: HandlerContext) -> None:
        await record_effect(ctx, group.specs[0].name, str(event.user_id // 1000), 0)

    async with RawProducer(kafka) as producer:  # all there before the consumer starts
        for partition in range(3):
            events = [_activity(partition * 1000 + i) for i in range(150)]
            await producer.send_events(topic.name, events, partition=partition)
    async with running_consumers(kafka, [group]):
        await _wait_for_effects(session_factory, group.specs[0].name, 450, within=60)

    effects = await effects_of(session_factory, group.specs[0].name)
    first_batches = {e.key for e in effects[:30]}
    assert first_batches == {"0", "1", "2"}, [e.key for e in effects[:30]]
