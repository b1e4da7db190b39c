"""On the real broker: with `kafka.group_instance_id`, a consumers process restarted under its name
takes its partitions back and the other process's groups do not rebalance; without it they do.

Each kill and restart of a consumers process used to rebalance every group of the other processes
twice (eager protocol): under repeated restarts a slow batch never finished within one generation
and its partitions made no progress for minutes (`make chaos`)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from consumers.app import Consumers
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_contracts.topics import TopicSpec
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.settings import Settings
from tests.integration.outbox_support import eventually
from tests.integration.pipeline_support import (
    RawProducer,
    effects_of,
    ensure_effects_table,
    record_effect,
    running_consumers,
)
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)


def _group_of_one_handler(topic: TopicSpec) -> tuple[HandlerGroup, str, str]:
    module = f"static{uuid.uuid4().hex[:8]}"
    group = HandlerGroup(module)

    @group.handler(UserActivity, action="record", topics=(topic,))
    async def record(event: UserActivity, ctx: HandlerContext) -> None:
        await record_effect(ctx, f"{module}.record", str(event.user_id), 0)

    return group, topic.name, f"{module}.record"


def _source_consumer(consumers: Consumers, topic: str) -> AIOKafkaConsumer:
    for subscriber in consumers.broker.subscribers:
        consumer: AIOKafkaConsumer | None = getattr(subscriber, "consumer", None)
        if topic in getattr(subscriber, "topic_names", ()) and consumer is not None:
            return consumer
    raise AssertionError(f"no running consumer of {topic}")


def _generation(consumer: AIOKafkaConsumer) -> int:
    coordinator: Any = consumer._coordinator
    return int(coordinator.generation)


def _as(kafka: Settings, instance: str | None) -> Settings:
    return kafka.model_copy(
        update={
            "kafka": kafka.kafka.model_copy(
                update={"group_instance_id": instance, "session_timeout_ms": 30_000}
            )
        }
    )


@pytest.mark.parametrize(("static", "rebalances"), [(True, False), (False, True)])
async def test_a_restarted_static_member_takes_its_partitions_back_without_a_rebalance(
    kafka: Settings, new_topic: Callable[..., Awaitable[str]], static: bool, rebalances: bool
) -> None:
    source = TopicSpec(name=await new_topic(partitions=4), partitions=4, key="test")
    group, topic, handler = _group_of_one_handler(source)
    first, second = ("a", "b") if static else (None, None)
    async with running_consumers(_as(kafka, first), [group]) as a:
        await ensure_effects_table(a.resources.session_factory)
        consumer_a = _source_consumer(a, topic)
        async with running_consumers(_as(kafka, second), [group]) as b:
            consumer_b = _source_consumer(b, topic)
            await _wait_for_split(consumer_a, consumer_b)
            settled_generation = _generation(consumer_a)
            kept = consumer_a.assignment()
            held_by_b = consumer_b.assignment()
        # b stopped; a static member does not leave its groups, so nothing moves until it returns.
        async with running_consumers(_as(kafka, second), [group]) as b_again:
            consumer_b = _source_consumer(b_again, topic)
            await wait_until(lambda: bool(consumer_b.assignment()), within=45)
            events = [_activity(user_id) for user_id in range(40)]
            async with RawProducer(kafka) as producer:
                await producer.send_events(topic, events)

            async def all_handled() -> bool:
                return len(await effects_of(a.resources.session_factory, handler)) >= len(events)

            await eventually(all_handled, within=60)
            if rebalances:
                await wait_until(lambda: _generation(consumer_a) > settled_generation, within=30)
            else:
                assert _generation(consumer_a) == settled_generation
                assert consumer_a.assignment() == kept
                assert consumer_b.assignment() == held_by_b
        effects = await effects_of(a.resources.session_factory, handler)
        assert sorted(e.event_id for e in effects) == sorted(e.event_id for e in events)


async def _wait_for_split(one: AIOKafkaConsumer, other: AIOKafkaConsumer) -> None:
    # Both members must report the same generation and disjoint halves: right after the join, the
    # first member can still report every partition of the generation before.
    def split() -> bool:
        mine, theirs = one.assignment(), other.assignment()
        return (
            bool(mine)
            and bool(theirs)
            and not mine & theirs
            and len(mine | theirs) == 4
            and _generation(one) == _generation(other)
        )

    await wait_until(split, within=45)


def _activity(user_id: int) -> EventEnvelope:
    return EventEnvelope.wrap(UserActivity(user_id=user_id, at=datetime.now(UTC)), producer="test")
