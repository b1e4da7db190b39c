"""A hung outbox relay (SIGSTOP) on the real PostgreSQL and Kafka: a standby takes over, nothing stops.

The leader's lock session ends after its idle limit (``lock_session_timeout_s``, 10 s by default),
a standby takes the lock and publishes; the old leader, resumed, checks its lease before its next
send and stands down without publishing again.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from dianabot_core.kafka import create_broker
from dianabot_core.outbox import OutboxRelay
from dianabot_core.publisher import EventPublisher
from dianabot_core.settings import Settings
from tests.integration.outbox_support import (
    PRODUCER,
    NewTopic,
    RelayProcess,
    SessionFactory,
    activity,
    all_published,
    first_seen_per_key,
    new_lock_key,
    read_topic,
    rows_of,
    write,
    written_per_key,
)

pytestmark = pytest.mark.integration

LOCK_TIMEOUT_S = 10.0  # OutboxRelay's default
STANDBY_RETRY_S = 0.2  # the relay process's


async def test_a_hung_leader_is_replaced_within_its_lock_timeout_and_never_publishes_again(
    kafka: Settings, session_factory: SessionFactory, new_topic: NewTopic, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=3)
    lock_key = new_lock_key()
    written = await write(
        session_factory, topic, [activity(i % 7, i) for i in range(600)], per_transaction=100
    )
    # The leader sends slowly (20 ms a record), so it is stopped mid-pass, holding rows it has
    # partly sent; the standby sends at full speed.
    hung = RelayProcess(kafka, topic, lock_key, tmp_path / "hung.log", "--send-delay-s=0.02", "--pause-s=0")
    standby = RelayProcess(kafka, topic, lock_key, tmp_path / "standby.log", "--pause-s=0")
    try:
        await hung.start()
        await hung.until("leading")
        await standby.start()
        for _ in range(150):  # into its second pass of 100
            await hung.until("sent ")
        hung.send(signal.SIGSTOP)
        stopped_at = time.monotonic()
        sent_before_stop = 150 + sum(line.startswith("sent ") for line in await hung.lines_for(0.5))

        await standby.until("leading", within=LOCK_TIMEOUT_S + 10)
        takeover_s = time.monotonic() - stopped_at
        await all_published(session_factory, topic, within=60)

        hung.send(signal.SIGCONT)
        after_resume = await hung.lines_for(LOCK_TIMEOUT_S / 2)
        more = await write(session_factory, topic, [activity(i % 7, i) for i in range(600, 700)], 20)
        await all_published(session_factory, topic, within=30)
        after_resume += await hung.lines_for(1.0)
        standby_lines = await standby.lines_for(0.5)
        assert await hung.stop() == 0
        assert await standby.stop() == 0
    finally:
        for relay in (hung, standby):
            if relay.process is not None:
                relay.process.send_signal(signal.SIGCONT)
            await relay.kill()

    print(
        f"\nhung relay: stopped after {sent_before_stop} sends; standby leading {takeover_s:.2f}s later "
        f"(lock timeout {LOCK_TIMEOUT_S:g}s); after SIGCONT the old leader printed {after_resume}"
    )
    # The server ended the hung leader's session after its idle limit, not sooner and not much later.
    assert LOCK_TIMEOUT_S * 0.6 < takeover_s < LOCK_TIMEOUT_S + STANDBY_RETRY_S + 2
    # Resumed, it stood down before sending anything, and did not take the lock back.
    assert "stood down" in after_resume
    assert not [line for line in after_resume if line.startswith(("sent ", "leading"))]
    assert "stood down" not in standby_lines

    rows = await rows_of(session_factory, topic)
    assert len(rows) == 700
    records = await read_topic(kafka, topic, partitions=3)
    counts = Counter(r.event_id for r in records)
    assert set(counts) == {e.event_id for e in [*written, *more]}  # nothing lost
    # Only the stopped pass's rows can be on Kafka twice (sent, never marked, sent again).
    assert len(records) - len(counts) <= sent_before_stop - 100
    assert first_seen_per_key(records) == written_per_key(rows)


class _SlowAcks(EventPublisher):
    """Kafka acknowledges every record ``delay_s`` late (a slow broker)."""

    def __init__(self, publisher: EventPublisher, delay_s: float) -> None:
        super().__init__(publisher.broker, publisher.producer)
        self._delay_s = delay_s

    async def enqueue(
        self,
        topic: str,
        *,
        key: str,
        body: bytes,
        headers: Mapping[str, str],
        correlation_id: str | None = None,
    ) -> asyncio.Future[Any]:
        acked = await super().enqueue(
            topic, key=key, body=body, headers=headers, correlation_id=correlation_id
        )
        late: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(self._delay_s, lambda: late.set_result(acked.result()))
        return late


async def test_a_pass_waiting_on_slow_acks_longer_than_its_idle_limit_still_marks_its_rows(
    kafka: Settings, session_factory: SessionFactory, new_topic: NewTopic
) -> None:
    # A 4 s lock timeout lets a pass's transaction idle for 2 s; the acks take 3 s. Only a running
    # relay is pinged: a hung one would have lost its rows' locks by then.
    topic = await new_topic(partitions=1)
    written = await write(session_factory, topic, [activity(1, i) for i in range(20)], per_transaction=20)
    broker = create_broker(kafka.kafka)
    await broker.connect()
    try:
        publisher = _SlowAcks(EventPublisher(broker, PRODUCER), delay_s=3.0)
        relay = OutboxRelay(
            session_factory, publisher, topics={topic}, lock_key=new_lock_key(), lock_session_timeout_s=4.0
        )
        assert await relay.relay_once() == 20
    finally:
        await broker.stop()
    assert all(published_at is not None for _, _, published_at in await rows_of(session_factory, topic))
    records = await read_topic(kafka, topic, partitions=1)
    assert [r.event_id for r in records] == [e.event_id for e in written]
