"""Dead-letter replay decisions without Kafka: headers dropped, registry topics only, copies as one."""

from __future__ import annotations

from typing import Any

from dianabot_contracts.topics import DEAD_LETTERS, USERS
from dianabot_core.cli.dead_letters import DeadLetter, PartitionProgress
from dianabot_core.cli.dlq import Replayer, collapse_copies


def _letter(offset: int, headers: dict[str, str], partition: int = 0) -> DeadLetter:
    encoded = tuple((k, v.encode()) for k, v in headers.items())
    return DeadLetter(partition, offset, 0, b"user:1", b"{}", encoded)


def _dead_letter(offset: int, source_offset: int, topic: str = USERS.name, handler: str = "h") -> DeadLetter:
    return _letter(
        offset,
        {
            "x-dlq-handler": handler,
            "x-original-topic": topic,
            "x-original-partition": "0",
            "x-original-offset": str(source_offset),
        },
    )


class FakeTopic:
    """The parts of DeadLetterTopic a Replayer uses."""

    def __init__(self, *topics: str) -> None:
        self.topics = set(topics)
        self.published: list[tuple[str, str]] = []

    def topic_exists(self, name: str) -> bool:
        return name in self.topics

    async def publish(self, letter: DeadLetter, topic: str) -> str:
        self.published.append((letter.position, topic))
        return f"0:{len(self.published)}"

    async def save_progress(self, progress: Any) -> None:
        pass


def test_a_replay_drops_every_origin_retry_and_dead_letter_header() -> None:
    letter = _letter(
        3,
        {
            "event_id": "e1",
            "X-Attempt": "2",
            "x-original-key": "user:1",
            "x-original-timestamp": "1700000000000",
            "x-dlq-new-detail": "x",
            "traceparent": "00-abc-def-01",
        },
    )
    assert letter.replay_headers() == [
        ("event_id", b"e1"),
        ("traceparent", b"00-abc-def-01"),
        ("x-replayed-from", b"0:3"),
    ]


def test_copies_are_one_dead_letter_per_handler_and_source_record() -> None:
    a, a_copy, other_handler, b = (
        _dead_letter(1, 7),
        _dead_letter(2, 7),
        _dead_letter(3, 7, handler="h2"),
        _dead_letter(4, 8),
    )
    unnamed, unnamed_twin = _letter(5, {}), _letter(6, {})
    groups = collapse_copies([a, a_copy, other_handler, b, unnamed, unnamed_twin])
    assert [[d.offset for d in g] for g in groups] == [[1, 2], [3], [4], [5], [6]]


async def test_only_registry_topics_are_replayed_and_copies_once() -> None:
    dlq = FakeTopic(USERS.name, DEAD_LETTERS.name, "other.service.topic")
    progress = {0: PartitionProgress(0)}
    replayer = Replayer(dlq, progress, settle_failures=True)  # type: ignore[arg-type]

    first = await replayer.replay(_dead_letter(0, 7))
    copy = await replayer.replay(_dead_letter(1, 7))
    foreign = await replayer.replay(_dead_letter(2, 9, topic="other.service.topic"))
    looping = await replayer.replay(_dead_letter(3, 10, topic=DEAD_LETTERS.name))

    assert copy is None
    assert first is not None
    assert (first.status, first.duplicates) == ("replayed", ["0:1"])
    assert foreign is not None
    assert foreign.failed
    assert foreign.status.startswith("refused: other.service.topic is not in the topic registry")
    assert looping is not None
    assert looping.failed
    assert dlq.published == [("0:0", USERS.name)]
    assert progress[0].watermark == 4  # every one settled, the copy with its dead letter


async def test_a_copy_of_a_dead_letter_replayed_before_is_not_replayed() -> None:
    dlq = FakeTopic(USERS.name)
    progress = {0: PartitionProgress(1)}  # offset 0 was replayed by an earlier run
    replayer = Replayer(dlq, progress, settle_failures=True)  # type: ignore[arg-type]
    replayed, late_copy = _dead_letter(0, 7), _dead_letter(1, 7)

    assert replayer.already_replayed(replayed)
    replayer.replayed_before(replayed)
    assert await replayer.replay(late_copy) is None
    assert (dlq.published, replayer.results, progress[0].watermark) == ([], [], 2)


async def test_an_operator_may_name_a_topic_outside_the_registry() -> None:
    dlq = FakeTopic("dianabot.scheduler.ticks.eu")
    allowed = {"dianabot.scheduler.ticks.eu"}
    replayer = Replayer(dlq, {}, allowed_topics=allowed)  # type: ignore[arg-type]
    result = await replayer.replay(_dead_letter(0, 1, topic="dianabot.scheduler.ticks.eu"))
    assert result is not None
    assert result.status == "replayed"
