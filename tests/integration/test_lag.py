"""Consumer-group lag from Kafka's admin API, on the real broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from dianabot_core.cli import build_parser
from dianabot_core.lag import GroupLag, group_lags
from dianabot_core.settings import Settings

RECORDS = 7


async def _topic_with_records(new_topic: Callable[..., Awaitable[str]], kafka: Settings) -> str:
    topic = await new_topic(partitions=2, prefix="test.lag")
    producer = AIOKafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send_and_wait(topic, b"x", partition=i % 2)
    finally:
        await producer.stop()
    return topic


async def _commit(kafka: Settings, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def test_a_group_that_read_none_of_n_records_lags_n_and_sets_the_gauge(
    kafka: Settings, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await _topic_with_records(new_topic, kafka)
    group = f"dianabot.test.lag{uuid.uuid4().hex[:8]}"
    await _commit(kafka, group, {TopicPartition(topic, 0): 0, TopicPartition(topic, 1): 0})

    lags = await group_lags(kafka.kafka, [group], update_metrics=True)

    assert lags == [GroupLag(group, topic, 0, 0, 4, 4), GroupLag(group, topic, 1, 0, 3, 3)]
    assert sum(lag.lag for lag in lags) == RECORDS
    labels = {"group": group, "topic": topic}
    assert REGISTRY.get_sample_value("dianabot_consumer_lag_records", labels) == RECORDS


async def test_a_live_member_that_never_committed_lags_from_the_log_start(
    kafka: Settings, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await _topic_with_records(new_topic, kafka)
    group = f"dianabot.test.lag{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        consumer.pause(*consumer.assignment())  # a consumer stuck before its first commit
        lags = await group_lags(kafka.kafka, [group])
    finally:
        await consumer.stop()

    assert [(lag.partition, lag.committed, lag.lag) for lag in lags] == [(0, None, 4), (1, None, 3)]


async def test_by_default_only_dianabot_groups_are_reported(
    kafka: Settings, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await _topic_with_records(new_topic, kafka)
    ours, theirs = f"dianabot.test.lag{uuid.uuid4().hex[:8]}", f"test.lag{uuid.uuid4().hex[:8]}"
    for group in (ours, theirs):
        await _commit(kafka, group, {TopicPartition(topic, 0): 1})

    groups = {lag.group for lag in await group_lags(kafka.kafka)}

    assert ours in groups
    assert theirs not in groups
    assert all(group.startswith("dianabot.") for group in groups)


async def test_the_cli_shows_lag_per_partition(
    kafka: Settings, new_topic: Callable[..., Awaitable[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = await _topic_with_records(new_topic, kafka)
    group = f"dianabot.test.lag{uuid.uuid4().hex[:8]}"
    await _commit(kafka, group, {TopicPartition(topic, 0): 4, TopicPartition(topic, 1): 1})
    args = build_parser().parse_args(["lag", "--group", group, "--lagging"])

    assert await args.run(args, kafka.kafka) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"]
    assert lines[1].split() == [group, topic, "1", "1", "3", "2"]  # partition 0 is caught up
    assert lines[2] == "total lag 2 over 1 group"
