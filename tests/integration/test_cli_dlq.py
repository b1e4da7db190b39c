"""The operator CLI on the real broker: replays only to the registry's topics, and copies of one
dead letter (a crash in the pipeline may write one twice) listed and replayed as one.

Dead letters are written straight to the dead-letter topic, as the pipeline writes them; each test
names its own handler, source topic and progress group.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from dianabot_contracts.topics import DEAD_LETTERS
from dianabot_core.cli import build_parser
from dianabot_core.settings import Settings


@pytest.fixture
async def producer(kafka: Settings, admin: AIOKafkaAdminClient) -> AsyncIterator[AIOKafkaProducer]:
    if DEAD_LETTERS.name not in await admin.list_topics():
        topic = NewTopic(DEAD_LETTERS.name, num_partitions=DEAD_LETTERS.partitions, replication_factor=1)
        await admin.create_topics([topic])
    producer = AIOKafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
def handler() -> str:
    return f"dianabot.test{uuid.uuid4().hex[:8]}.grant"


@pytest.fixture
def progress_group() -> str:
    return f"test.cli.dlq-replay.{uuid.uuid4().hex[:10]}"


async def _dead_letter(
    producer: AIOKafkaProducer, handler: str, source: tuple[str, int, int], **extra: str
) -> str:
    """A dead letter as the pipeline writes it (with retry headers); its PARTITION:OFFSET."""
    topic, partition, offset = source
    headers = {
        "event_id": str(uuid.uuid4()),
        "event_type": "user.activity",
        "x-attempt": "3",
        "x-due-at": "1700000000000",
        "x-last-error": "TimeoutError",
        "x-original-topic": topic,
        "x-original-partition": str(partition),
        "x-original-offset": str(offset),
        "x-dlq-reason": "transient: TimeoutError (retries exhausted)",
        "x-dlq-handler": handler,
        "x-dlq-attempts": "3",
        **extra,
    }
    sent = await producer.send_and_wait(
        DEAD_LETTERS.name,
        b'{"payload": "original bytes"}',
        key=f"user:{offset}".encode(),
        headers=[(k, v.encode()) for k, v in headers.items()],
    )
    return f"{sent.partition}:{sent.offset}"


async def _cli(kafka: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """A command in this process (its event loop is the test's), its exit status and JSON output."""
    capsys.readouterr()
    args = build_parser().parse_args([*argv, "--json"])
    code: int = await args.run(args, kafka.kafka)
    return code, json.loads(capsys.readouterr().out)


async def _records_on(kafka: Settings, topic: str) -> list[Any]:
    """Every record of `topic` (one partition)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.kafka.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        records: list[Any] = []
        while await consumer.position(partition) < end:
            records += (await consumer.getmany(partition, timeout_ms=500)).get(partition, [])
        return records
    finally:
        await consumer.stop()


async def test_a_replay_goes_only_to_a_topic_of_the_registry(
    kafka: Settings,
    producer: AIOKafkaProducer,
    new_topic: Callable[..., Awaitable[str]],
    handler: str,
    progress_group: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    elsewhere = await new_topic(partitions=1)
    to_elsewhere = await _dead_letter(producer, handler, (elsewhere, 0, 5), **{"x-original-key": "user:5"})
    to_itself = await _dead_letter(producer, handler, (DEAD_LETTERS.name, 0, 6))
    to_users = await _dead_letter(producer, handler, ("dianabot.users", 0, 7))
    replay = ("dlq", "replay", "--progress-group", progress_group)

    code, results = await _cli(kafka, capsys, *replay, to_elsewhere, to_itself)
    assert code == 1
    assert [r["status"] for r in results] == [
        f"refused: {elsewhere} is not in the topic registry (--allow-topic {elsewhere} replays there)",
        f"refused: {DEAD_LETTERS.name} is not in the topic registry "
        f"(--allow-topic {DEAD_LETTERS.name} replays there)",
    ]
    assert await _records_on(kafka, elsewhere) == []
    code, [result] = await _cli(kafka, capsys, *replay, to_users, "--dry-run")
    assert not result["status"].startswith("refused")  # "would replay", or the topic is not declared here

    code, [result] = await _cli(kafka, capsys, *replay, to_elsewhere, "--allow-topic", elsewhere)
    assert (code, result["status"]) == (0, "replayed")
    [record] = await _records_on(kafka, elsewhere)
    headers = dict(record.headers)
    assert headers["x-replayed-from"] == to_elsewhere.encode()
    assert not [k for k in headers if k.startswith(("x-dlq-", "x-original-", "x-attempt", "x-due-at"))]
    assert {"event_id", "event_type"} <= set(headers)


async def test_copies_of_a_dead_letter_are_listed_and_replayed_as_one(
    kafka: Settings,
    producer: AIOKafkaProducer,
    new_topic: Callable[..., Awaitable[str]],
    handler: str,
    progress_group: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = await new_topic(partitions=1)
    first = await _dead_letter(producer, handler, (source, 0, 7))
    copy = await _dead_letter(producer, handler, (source, 0, 7))  # the pipeline crashed after writing it
    other = await _dead_letter(producer, handler, (source, 0, 8))
    listing = ("dlq", "list", "--handler", handler, "--progress-group", progress_group)
    replay_all = ["dlq", "replay", "--all", "--handler", handler, "--progress-group", progress_group]
    replay_all += ["--allow-topic", source]

    code, rows = await _cli(kafka, capsys, *listing)
    assert code == 0
    assert [(r["dead_letter"], r["copies"], r["duplicates"]) for r in rows] == [
        (first, 2, [copy]),
        (other, 1, []),
    ]
    args = build_parser().parse_args(list(listing))
    await args.run(args, kafka.kafka)
    assert capsys.readouterr().out.startswith(
        f"2 dead letters on {DEAD_LETTERS.name} (1 more copy of them collapsed)\n"
    )

    code, results = await _cli(kafka, capsys, *replay_all)
    assert code == 0
    assert [(r["dead_letter"], r["status"], r["duplicates"]) for r in results] == [
        (first, "replayed", [copy]),
        (other, "replayed", []),
    ]
    assert len(await _records_on(kafka, source)) == 2

    # Another copy, written after the replay: it is the dead letter replayed already.
    late = await _dead_letter(producer, handler, (source, 0, 7))
    code, results = await _cli(kafka, capsys, *replay_all)
    assert (code, results) == (0, [])
    assert len(await _records_on(kafka, source)) == 2
    code, rows = await _cli(kafka, capsys, *listing)
    assert [(r["copies"], r["duplicates"], r["replayed"]) for r in rows] == [
        (3, [copy, late], True),
        (1, [], True),
    ]
